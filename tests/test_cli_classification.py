"""A classification head end to end: `domainlm train --head classification` on a user CSV of class names,
then `domainlm predict` writes class names and per-class probabilities."""

import json

import numpy as np
import pytest

from cli_helpers import easy_rows, invoke, read_csv, train_user_task, with_splits, write_csv

TEMPLATE = "The SMILES is <SMILES> {smiles}. Kind <Kind>"
CLASSES = ["long", "short"]  # sorted class names: index 0 and 1


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    """The easy task as classes (long chains vs short strings), 8 train / 2 val / 2 test: (data, run)."""
    root = tmp_path_factory.mktemp("classification")
    rows = with_splits([(s, "long" if y else "short") for s, y in easy_rows()])
    data = write_csv(root / "kinds.csv", rows, ("smiles", "kind", "split"))
    extra = ["--head", "classification", "--split-column", "split", "--char-level", "SMILES"]
    res = train_user_task(
        model_dir("bert"), data, root / "run", *extra, template=TEMPLATE, label_column="kind", epochs=20
    )
    assert res.exit_code == 0, res.output
    return data, root / "run"


@pytest.fixture(scope="module")
def predicted(run) -> list[dict]:
    data, out = run
    res = invoke("predict", "--run", out, "--input", data, "--out", out.parent / "pred.csv")
    assert res.exit_code == 0, res.output
    return read_csv(out.parent / "pred.csv")


def test_run_reports_classification_metrics_recomputed_from_its_predictions(run):
    metrics = json.loads((run[1] / "metrics.json").read_text())
    assert "test_mse" not in metrics and metrics["info"]["classes"] == CLASSES
    rows = read_csv(run[1] / "predictions_test.csv")
    assert [float(r["p0"]) + float(r["p1"]) for r in rows] == pytest.approx([1.0, 1.0])
    accuracy = np.mean([r["true"] == r["prediction"] for r in rows])
    assert metrics["test_accuracy"] == pytest.approx(accuracy)


def test_library_holds_a_two_way_head_with_its_class_names(run):
    library = json.loads((run[1] / "tags" / "tags.json").read_text())
    kind = next(t for t in library["tags"] if t["name"] == "Kind")
    assert kind["kind"] == "function" and kind["head"]["type"] == "classification"
    assert kind["head"]["n_classes"] == 2


def probabilities(row) -> list[float]:
    """The per-class probability columns (p_...), in class order."""
    return [float(v) for k, v in row.items() if k.startswith("p_")]


def test_predict_writes_one_probability_a_class_summing_to_one(predicted):
    for row in predicted:
        assert len(probabilities(row)) == 2
        assert sum(probabilities(row)) == pytest.approx(1.0, abs=1e-5)


def test_predict_names_the_classes(predicted):
    assert list(predicted[0]) == ["smiles", "kind", "split", "prediction", "p_long", "p_short"]
    for row in predicted:
        assert row["prediction"] == CLASSES[int(np.argmax(probabilities(row)))]


def test_trained_head_classifies_every_training_row(predicted):
    guessed = [CLASSES[int(np.argmax(probabilities(r)))] for r in predicted[:8]]
    assert guessed == [r["kind"] for r in predicted[:8]]
