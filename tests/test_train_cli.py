"""`domainlm train / eval / predict` end to end on tiny saved models: the three stages, overfitting,
resume after an interruption, and bad input."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import (
    TEMPLATE,
    easy_rows,
    invoke,
    read_csv,
    toy_rows,
    train_user_task,
    with_splits,
    write_csv,
)


@pytest.fixture(scope="module", params=["llama", "bert"])
def saved_model(request, model_dir):
    return request.param, model_dir(request.param)


@pytest.fixture(scope="module")
def overfit(saved_model, tmp_path_factory):
    """40 epochs on the easy task (8 train / 2 val / 2 test rows), domain tags trained too: (data, run)."""
    _, model = saved_model
    root = tmp_path_factory.mktemp("overfit")
    data = write_csv(root / "easy.csv", with_splits(easy_rows()), ("smiles", "y", "split"))
    out = root / "run"
    extra = ["--split-column", "split", "--char-level", "SMILES", "--train-domain-tags"]
    res = train_user_task(model, data, out, *extra, epochs=40)
    assert res.exit_code == 0, res.output
    return data, out


@pytest.fixture(scope="module")
def predicted(overfit) -> np.ndarray:
    """`domainlm predict` with the finished run over its own data file: one prediction a row."""
    data, out = overfit
    res = invoke("predict", "--run", out, "--input", data, "--out", out.parent / "pred.csv")
    assert res.exit_code == 0, res.output
    rows = read_csv(out.parent / "pred.csv")
    assert [(r["smiles"], float(r["y"])) for r in rows] == easy_rows()  # the input columns, in order
    return np.array([float(r["prediction"]) for r in rows])


def test_training_loss_falls_tenfold(overfit):
    losses = [row["train_loss"] for row in json.loads((overfit[1] / "history.json").read_text())]
    assert len(losses) == 80  # 2 batches an epoch, 40 epochs
    assert np.mean(losses[-2:]) < 0.1 * np.mean(losses[:2])


def test_trained_tags_fit_the_training_rows_far_better_than_the_mean(predicted):
    y = np.array([label for _, label in easy_rows()])[:8]
    assert np.mean((predicted[:8] - y) ** 2) < 0.1 * np.mean((y.mean() - y) ** 2)


def test_run_directory_is_complete(overfit):
    _, out = overfit
    for name in ("config.yaml", "metrics.json", "train.log", "training_curve.png", "scatter_test.png"):
        assert (out / name).exists(), name
    for name in ("tags/tags.json", "tags/tags.safetensors", "predictions_test.csv"):
        assert (out / name).exists(), name
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_params"] == 2 * 10 * 32 + 32 + 1  # two tags x 10 vectors + the linear head


def test_test_metrics_equal_a_recomputation_from_the_predictions_file(overfit):
    rows = read_csv(overfit[1] / "predictions_test.csv")
    true, pred = (np.array([float(r[c]) for r in rows]) for c in ("true", "prediction"))
    metrics = json.loads((overfit[1] / "metrics.json").read_text())
    assert [r["id"] for r in rows] == ["line 12", "line 13"]  # the CSV's last two rows (line 1: header)
    assert metrics["test_mse"] == pytest.approx(np.mean((true - pred) ** 2), rel=1e-5)
    assert metrics["test_mae"] == pytest.approx(np.mean(np.abs(true - pred)), rel=1e-5)


def test_eval_reproduces_the_test_mse(overfit):
    _, out = overfit
    res = invoke("eval", "--run", out, "--split", "test")
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "eval_test.json").read_text())["mse"] == pytest.approx(
        metrics["test_mse"], rel=1e-4
    )


def test_predict_reproduces_the_runs_test_predictions(overfit, predicted):
    saved = [float(r["prediction"]) for r in read_csv(overfit[1] / "predictions_test.csv")]
    assert predicted[-2:] == pytest.approx(saved, rel=1e-4, abs=1e-5)


@pytest.fixture(scope="module")
def stage_one(model_dir, tmp_path_factory):
    """Stage 1 on a causal LM: a char-level <SMILES> domain tag from 40 unlabelled strings."""
    root = tmp_path_factory.mktemp("stage1")
    res = train_domain_tag(model_dir("llama"), root / "smiles.txt", root / "smiles")
    assert res.exit_code == 0, res.output
    return root / "smiles"


def train_domain_tag(model, corpus, out):
    corpus.write_text("\n".join(s for s, _ in toy_rows(40, seed=1)))
    args = ["--model", model, "--corpus", corpus, "--tag", "SMILES", "--char-level", "SMILES", "--out", out]
    args += ["--epochs", 5, "--lr", 1e-2, "--batch-size", 8, "--grad-accum", 1]
    return invoke("train", "--stage", "domain", *args)


def test_stage_one_lowers_the_next_token_loss_and_saves_one_domain_tag(stage_one):
    history = json.loads((stage_one / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    library = json.loads((stage_one / "tags" / "tags.json").read_text())
    assert [(t["name"], t["kind"]) for t in library["tags"]] == [("SMILES", "domain")]


def test_stage_one_refuses_an_encoder(model_dir, tmp_path):
    res = train_domain_tag(model_dir("bert"), tmp_path / "smiles.txt", tmp_path / "smiles")
    assert res.exit_code != 0 and "no LM head" in res.output
    assert json.loads((tmp_path / "smiles" / "status.json").read_text())["status"] == "failed"


def test_stage_two_keeps_the_stage_one_tag_frozen_and_adds_its_own(model_dir, stage_one, tmp_path):
    data = write_csv(tmp_path / "toy.csv", toy_rows())
    res = train_user_task(model_dir("llama"), data, tmp_path / "y", "--tags", stage_one)
    assert res.exit_code == 0, res.output
    stage1 = load_file(stage_one / "tags" / "tags.safetensors")["tag.SMILES"]
    stage2 = load_file(tmp_path / "y" / "tags" / "tags.safetensors")
    assert torch.equal(stage1, stage2["tag.SMILES"])
    assert "tag.Y" in stage2 and "head.Y.linear.weight" in stage2


def test_enrich_moves_the_stage_one_tag(model_dir, stage_one, tmp_path):
    data = write_csv(tmp_path / "toy.csv", toy_rows())
    res = train_user_task(model_dir("llama"), data, tmp_path / "e", "--tags", stage_one, "--enrich", epochs=2)
    assert res.exit_code == 0, res.output
    stage1 = load_file(stage_one / "tags" / "tags.safetensors")["tag.SMILES"]
    enriched = load_file(tmp_path / "e" / "tags" / "tags.safetensors")["tag.SMILES"]
    assert not torch.equal(stage1, enriched)


def test_interrupted_run_resumes_from_its_checkpoint_to_the_same_result(model_dir, tmp_path, monkeypatch):
    data = write_csv(tmp_path / "toy.csv", with_splits(toy_rows(24), 4, 4), ("smiles", "y", "split"))
    extra = ["--split-column", "split", "--char-level", "SMILES", "--train-domain-tags"]
    extra += ["--checkpoint-every", 2]  # 3 epochs x 4 batches = 12 steps
    model, real_step, calls = model_dir("llama"), torch.optim.AdamW.step, []
    assert train_user_task(model, data, tmp_path / "full", *extra).exit_code == 0

    def counted_step(self, *a, **k):
        calls.append(1)
        if len(calls) == 7:  # killed in step 7: the checkpoint of step 6 survives
            raise KeyboardInterrupt("killed")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted_step)
    assert train_user_task(model, data, tmp_path / "cut", *extra).exit_code != 0
    assert json.loads((tmp_path / "cut" / "status.json").read_text())["status"] == "failed"
    res = train_user_task(model, data, tmp_path / "cut", *extra)
    assert res.exit_code != 0 and "unfinished" in res.output
    calls.clear()
    assert train_user_task(model, data, tmp_path / "cut", *extra, "--resume").exit_code == 0
    assert len(calls) == 6  # only the steps after the checkpoint
    assert "resumed from" in (tmp_path / "cut" / "train.log").read_text()  # and says so
    full, resumed = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "cut"))
    assert resumed["test_mse"] == pytest.approx(full["test_mse"], rel=1e-5)


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        ([("CCO", "0.5"), ("CC", "nan")], [], "line 3"),
        ([("CCO", "0.5"), ("CC", "abc")], [], "line 3"),
        ([], [], "no data rows"),
        ([("CCO", "0.5")], ["--template", "The SMILES is <SMILES> {smile}. <Y>"], "smile"),
    ],
)
def test_bad_input_fails_clearly_without_a_complete_run(saved_model, tmp_path, rows, extra, message):
    _, model = saved_model
    data = write_csv(tmp_path / "bad.csv", rows)
    args = ["train", "--model", model, "--data", data, "--label-column", "y", "--out", tmp_path / "run"]
    args += extra or ["--template", TEMPLATE]
    res = invoke(*args)
    assert res.exit_code != 0
    assert message in res.output
    status = tmp_path / "run" / "status.json"
    assert not status.exists() or json.loads(status.read_text())["status"] != "complete"


def test_predict_refuses_unknown_tags(saved_model, tmp_path):
    _, model = saved_model
    data = write_csv(tmp_path / "toy.csv", toy_rows())
    out = tmp_path / "run"
    assert train_user_task(model, data, out, "--train-domain-tags", epochs=1).exit_code == 0
    args = ["--model", model, "--tags", out / "tags", "--template", "<Protein> {smiles} <Y>"]
    res = invoke("predict", *args, "--input", data, "--out", tmp_path / "p.csv")
    assert res.exit_code != 0 and "Protein" in res.output


def test_a_new_tag_can_start_from_words(model_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    model = model_dir("llama")
    data = write_csv(tmp_path / "toy.csv", toy_rows())
    res = train_user_task(
        model, data, tmp_path / "y", "--tag-init-text", "Y=quality", "--lr", 1e-12, epochs=1
    )
    assert res.exit_code == 0, res.output
    tokenizer, base = AutoTokenizer.from_pretrained(model), AutoModel.from_pretrained(model)
    ids = tokenizer("quality", add_special_tokens=False)["input_ids"]
    words = base.get_input_embeddings().weight[ids].detach()
    trained = load_file(tmp_path / "y" / "tags" / "tags.safetensors")["tag.Y"]
    torch.testing.assert_close(trained[-len(ids) :], words, atol=1e-6, rtol=0)  # lr ~0: still the words
    assert "tag_init_text:\n    Y: quality" in (tmp_path / "y" / "config.yaml").read_text()
    res = train_user_task(model, data, tmp_path / "z", "--tag-init-text", "Y")
    assert res.exit_code != 0 and "NAME=TEXT" in res.output
