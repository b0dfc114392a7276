"""Over-long inputs: `error` refuses them, `truncate` keeps the start of a long data span, `window` splits
it; truncated and windowed inputs are counted, in the encoding and in a run's metrics.json."""

import json

import pytest
import torch
from transformers import AutoModel

from cli_helpers import train_user_task, with_splits, write_csv
from domainlm.engine.model import TaggedModel
from domainlm.errors import InputError
from tiny_models import tiny_config, tiny_tokenizer

LONG = "C" * 50 + "N" * 50  # 100 characters, one token each


def tagged(positions: int = 1024) -> TaggedModel:
    """A tiny BERT (absolute positions, so a hard limit) with a char-level <SMILES> and a <QED> head."""
    config = tiny_config("bert", vocab_size=256)
    config.max_position_embeddings = positions
    torch.manual_seed(0)
    tm = TaggedModel(AutoModel.from_config(config).eval(), tiny_tokenizer("bert"))
    tm.add_tag("SMILES", char_level=True)
    tm.add_tag("QED", "function", head="regression")
    with torch.no_grad():
        tm.heads["QED"].linear.weight.normal_()
    return tm


def test_truncate_keeps_the_first_max_span_tokens_and_counts_the_rest():
    tm = tagged()
    tm.set_length_policy("truncate", max_span=20)
    cut = tm.encoder.encode(f"<SMILES> {LONG} <QED>")
    kept = tm.encoder.encode(f"<SMILES> {LONG[:20]} <QED>")
    assert cut.ids == kept.ids and cut.tag_slots == kept.tag_slots
    assert (cut.truncated, cut.windows) == (80, 0)
    assert kept.truncated == 0


def test_truncated_input_predicts_as_its_start_would():
    tm = tagged()
    tm.set_length_policy("truncate", max_span=20)
    with torch.no_grad():
        cut, kept, other = (
            tm(**tm.encode([f"<SMILES> {s} <QED>"])).predictions for s in (LONG, LONG[:20], LONG[-20:])
        )
    torch.testing.assert_close(cut, kept, rtol=0, atol=0)
    assert not torch.allclose(cut, other)


@pytest.mark.parametrize("isolate", [False, True])
def test_truncate_shortens_the_span_just_enough_to_fit_the_models_positions(isolate):
    tm = tagged(positions=64)
    tm.set_length_policy("truncate")
    batch = tm.encode([f"<SMILES> {LONG} <QED>"], isolate=isolate)
    assert int(batch["position_ids"].max()) == 63
    ex = tm.encoder.encode(f"<SMILES> {LONG} <QED>", isolate=isolate)
    span = [i for i, s in zip(ex.ids, ex.tag_slots) if s < 0][1:-1]  # between [CLS] and [SEP]
    assert span == tm.tokenizer(LONG[: len(span)], add_special_tokens=False)["input_ids"]
    assert ex.truncated == len(LONG) - len(span) > 0


def test_error_refuses_what_window_splits_and_truncate_cuts():
    text = f"<SMILES> {LONG} <QED>"
    tm = tagged(positions=64)
    with pytest.raises(InputError, match="overflow policy"):
        tm.encode([text])
    tm.set_length_policy("window", max_span=30)
    windowed = tm.encoder.encode(text, isolate=True)
    assert (windowed.windows, windowed.truncated) == (3, 0)  # 100 tokens: 30 + 3 windows of 30 / 10
    assert int(tm.encode([text], isolate=True)["position_ids"].max()) < 64
    tm.set_length_policy("truncate")
    assert tm.encoder.encode(text).truncated > 0


def test_train_with_truncate_counts_truncated_inputs_per_split(model_dir, tmp_path):
    smiles = "CCCCCCCC NN CCNNOOCC OOO CCCCCC N CNCNCNC CC CCCCCCC O NNNNNN C".split()  # 8 / 2 / 2
    rows = with_splits([(s, len(s) / 10) for s in smiles])
    data = write_csv(tmp_path / "long.csv", rows, ("smiles", "y", "split"))
    extra = ["--split-column", "split", "--char-level", "SMILES", "--overflow", "truncate"]
    res = train_user_task(model_dir("bert"), data, tmp_path / "run", *extra, "--max-span-tokens", 5, epochs=1)
    assert res.exit_code == 0, res.output
    overflow = json.loads((tmp_path / "run" / "metrics.json").read_text())["overflow"]
    assert overflow["mode"] == "truncate" and overflow["max_span_tokens"] == 5
    longer = [sum(len(s) > 5 for s in part) for part in (smiles[:8], smiles[8:10], smiles[10:])]
    assert [overflow[f"{name}_truncated"] for name in ("train", "val", "test")] == longer == [4, 1, 1]
    assert overflow["train_windowed"] == 0


@pytest.fixture(scope="module")
def short_bert(tmp_path_factory):
    """A saved tiny BERT that takes only 64 positions, so a 100-character SMILES is over-long."""
    path = tmp_path_factory.mktemp("bert64")
    tm = tagged(positions=64)
    tm.base.save_pretrained(path)
    tm.tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("reuse", ["--reuse", "--no-reuse"])
def test_over_long_input_is_refused_before_training_naming_file_and_line(short_bert, tmp_path, reuse):
    rows = with_splits([("CCO", 0.1), ("CCN", 0.2), ("CNO", 0.3), (LONG, 0.4), *[("CC", 0.5)] * 6])
    data = write_csv(tmp_path / "long.csv", rows, ("smiles", "y", "split"))  # LONG on line 5
    extra = ["--split-column", "split", "--char-level", "SMILES", reuse]
    res = train_user_task(short_bert, data, tmp_path / "run", *extra, epochs=1)
    assert res.exit_code == 2, res.output
    message = " ".join(res.output.split())
    assert "long.csv, line 5: input is" in message and "--overflow truncate" in message
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # no training step ran
