"""Scoring new drug-drug-cell rows: SMILES come from drug names, unseen drugs and cell lines are refused."""

import pytest

from cli_helpers import invoke, write_csv
from domainlm.errors import InputError
from domainlm.tasks import get_task
from domainlm.tasks.synergy import prepare_prediction_rows


def known(data_dir):
    data = get_task("synergy").load(data_dir, limit_train=5, limit_eval=5)
    return data.test[0].fields


def test_smiles_filled_from_names(data_dir):
    f = known(data_dir)
    rows = prepare_prediction_rows(
        [{"drug_a": f["drug_a"], "drug_b": f["drug_b"], "cell_line": f["cell_line"]}], data_dir
    )
    assert rows[0]["smiles_a"] == f["smiles_a"] and rows[0]["smiles_b"] == f["smiles_b"]


@pytest.mark.parametrize(
    "field, value, message",
    [("drug_b", "NOTADRUG", "unknown drug"), ("cell_line", "NOTACELL", "unknown cell line")],
)
def test_unknown_items_are_named(data_dir, field, value, message):
    f = known(data_dir)
    row = {"drug_a": f["drug_a"], "drug_b": f["drug_b"], "cell_line": f["cell_line"], field: value}
    with pytest.raises(InputError, match=f"new.csv, line 7: {message}"):
        prepare_prediction_rows([row], data_dir, source="new.csv", lines=[7])


def test_predict_from_names_through_the_cli(data_dir, model_dir, tmp_path):
    args = [
        "--task",
        "synergy",
        "--data-dir",
        data_dir,
        "--model",
        model_dir("bert"),
        "--out",
        tmp_path / "run",
    ]
    args += ["--limit-train", 4, "--limit-eval", 4, "--epochs", 1, "--batch-size", 4, "--grad-accum", 1]
    res = invoke("train", *args, "--train-domain-tags")
    assert res.exit_code == 0, res.output
    f = known(data_dir)
    rows = [(f["drug_a"], f["drug_b"], f["cell_line"]), (f["drug_a"], f["drug_b"], "NOTACELL")]
    new = write_csv(tmp_path / "new.csv", rows, ("drug_a", "drug_b", "cell_line"))
    res = invoke("predict", "--run", tmp_path / "run", "--input", new, "--out", tmp_path / "p.csv")
    assert res.exit_code == 2 and "line 3" in res.output and "unknown cell line" in res.output
