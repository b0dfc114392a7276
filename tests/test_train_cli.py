"""`domainlm train / eval / predict` end to end on tiny saved models: the three stages, overfitting,
resume after an interruption, and bad input."""

import csv
import json
import random

import pytest
import torch
from typer.testing import CliRunner

from domainlm.cli import _register, app
from tiny_models import tiny_model

_register()
runner = CliRunner()
TEMPLATE = "The SMILES is <SMILES> {smiles}. Value <Y>"


@pytest.fixture(scope="module", params=["llama", "bert"])
def saved_model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    model, tok = tiny_model(request.param)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return request.param, path


def write_csv(path, rows, header=("smiles", "y")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def toy_rows(n=12, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        s = "".join(rng.choice("CNO") for _ in range(rng.randint(3, 10)))
        rows.append((s, round(s.count("C") / len(s), 4)))
    return rows


def train_user_task(model, data, out, *extra, epochs=3):
    """`domainlm train` on the toy CSV with the shared template and small-data settings."""
    return invoke(
        "train",
        "--model",
        model,
        "--data",
        data,
        "--template",
        TEMPLATE,
        "--label-column",
        "y",
        "--epochs",
        epochs,
        "--lr",
        1e-2,
        "--batch-size",
        4,
        "--grad-accum",
        1,
        "--out",
        out,
        *extra,
    )


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_function_stage_overfits_and_writes_a_complete_run(saved_model, tmp_path):
    family, model = saved_model
    data = write_csv(tmp_path / "toy.csv", toy_rows())
    out = tmp_path / "run"
    res = train_user_task(
        model, data, out, "--split-column", "", "--char-level", "SMILES", "--train-domain-tags", epochs=40
    )
    assert res.exit_code == 0, res.output
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    for name in (
        "config.yaml",
        "metrics.json",
        "train.log",
        "training_curve.png",
        "scatter_test.png",
        "tags/tags.json",
        "tags/tags.safetensors",
        "predictions_test.csv",
    ):
        assert (out / name).exists(), name
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_params"] == 2 * 10 * 32 + 32 + 1

    res = invoke("eval", "--run", out, "--split", "test")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "eval_test.json").read_text())["mse"] == pytest.approx(
        metrics["test_mse"], rel=1e-4
    )

    new = write_csv(tmp_path / "new.csv", [("CCO", ""), ("NNN", "")])
    res = invoke("predict", "--run", out, "--input", new, "--out", tmp_path / "pred.csv")
    assert res.exit_code == 0, res.output
    with open(tmp_path / "pred.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["smiles"] for r in rows] == ["CCO", "NNN"]
    assert all(abs(float(r["prediction"])) < 10 for r in rows)  # finite, in label range


def test_stage_one_then_stage_two_chain(saved_model, tmp_path):
    family, model = saved_model
    corpus = tmp_path / "smiles.txt"
    corpus.write_text("\n".join(s for s, _ in toy_rows(40, seed=1)))
    res = invoke(
        "train",
        "--stage",
        "domain",
        "--model",
        model,
        "--corpus",
        corpus,
        "--tag",
        "SMILES",
        "--char-level",
        "SMILES",
        "--epochs",
        5,
        "--lr",
        1e-2,
        "--batch-size",
        8,
        "--grad-accum",
        1,
        "--out",
        tmp_path / "smiles",
    )
    if family == "bert":
        assert res.exit_code != 0 and "no LM head" in res.output
        assert json.loads((tmp_path / "smiles" / "status.json").read_text())["status"] == "failed"
        return
    assert res.exit_code == 0, res.output
    history = json.loads((tmp_path / "smiles" / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    lib = json.loads((tmp_path / "smiles" / "tags" / "tags.json").read_text())
    assert [t["name"] for t in lib["tags"]] == ["SMILES"]

    data = write_csv(tmp_path / "toy.csv", toy_rows())
    res = train_user_task(model, data, tmp_path / "y", "--tags", tmp_path / "smiles")
    assert res.exit_code == 0, res.output
    from safetensors.torch import load_file

    stage1 = load_file(tmp_path / "smiles" / "tags" / "tags.safetensors")["tag.SMILES"]
    stage2 = load_file(tmp_path / "y" / "tags" / "tags.safetensors")
    assert torch.equal(stage1, stage2["tag.SMILES"])  # domain tags stay frozen by default
    assert "tag.Y" in stage2 and "head.Y.linear.weight" in stage2

    res = train_user_task(
        model, data, tmp_path / "enriched", "--tags", tmp_path / "smiles", "--enrich", epochs=2
    )
    assert res.exit_code == 0, res.output
    enriched = load_file(tmp_path / "enriched" / "tags" / "tags.safetensors")["tag.SMILES"]
    assert not torch.equal(stage1, enriched)


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    from domainlm import training
    from domainlm.errors import DomainLMError
    from domainlm.tagruns import train_tagged_task
    from domainlm.tasks.base import Example, TaskData, TaskSpec

    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    rows = [Example(str(i), {"smiles": s}, y) for i, (s, y) in enumerate(toy_rows(24))]
    data = TaskData(rows[:16], rows[16:20], rows[20:])
    spec = TaskSpec("toy", TEMPLATE, char_level_tags=("SMILES",))
    config = training.TrainConfig(
        epochs=3, lr=1e-2, batch_size=4, grad_accum=1, checkpoint_every=2, train_domain_tags=True
    )
    full = train_tagged_task(spec, data, str(tmp_path / "m"), tmp_path / "full", config)

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("killed")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_tagged_task(spec, data, str(tmp_path / "m"), tmp_path / "cut", config)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert json.loads((tmp_path / "cut" / "status.json").read_text())["status"] == "failed"
    with pytest.raises(DomainLMError, match="unfinished"):
        train_tagged_task(spec, data, str(tmp_path / "m"), tmp_path / "cut", config)
    resumed = train_tagged_task(spec, data, str(tmp_path / "m"), tmp_path / "cut", config, resume=True)
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
    res = invoke(
        "predict",
        "--model",
        model,
        "--tags",
        out / "tags",
        "--template",
        "<Protein> {smiles} <Y>",
        "--input",
        data,
        "--out",
        tmp_path / "p.csv",
    )
    assert res.exit_code != 0 and "Protein" in res.output
