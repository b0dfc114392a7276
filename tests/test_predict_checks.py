"""`domainlm predict` checks its rows as training does: an invalid SMILES (or an over-long input) stops it
naming the file and line, or with --skip-invalid the row is written with an empty prediction and a reason."""

import pytest

from cli_helpers import invoke, read_csv, toy_rows, train_user_task, with_splits, write_csv

ROWS = [("CCO",), ("C1CC(N",), ("hello world",), ("CCN",)]  # lines 2..5; lines 3 and 4 are not SMILES


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict-checks")
    data = write_csv(root / "toy.csv", with_splits(toy_rows(8)), ("smiles", "y", "split"))
    res = train_user_task(model_dir("bert"), data, root / "run", "--split-column", "split", epochs=1)
    assert res.exit_code == 0, res.output
    return root


def test_predict_refuses_an_invalid_smiles_naming_file_and_line(run):
    inputs = write_csv(run / "new.csv", ROWS, ("smiles",))
    res = invoke("predict", "--run", run / "run", "--input", inputs, "--out", run / "refused.csv")
    assert res.exit_code == 2
    message = " ".join(res.output.split())
    assert "new.csv, line 3:" in message and "C1CC(N" in message and "--skip-invalid" in message
    assert not (run / "refused.csv").exists()


def test_skip_invalid_writes_every_row_with_a_reason_for_the_skipped_ones(run):
    inputs = write_csv(run / "new.csv", ROWS, ("smiles",))
    out = run / "skipped.csv"
    res = invoke("predict", "--run", run / "run", "--input", inputs, "--out", out, "--skip-invalid")
    assert res.exit_code == 0, res.output
    assert "(2 rows skipped)" in " ".join(res.output.split())
    rows = read_csv(out)
    assert [r["smiles"] for r in rows] == [r[0] for r in ROWS]
    assert [bool(r["prediction"]) for r in rows] == [True, False, False, True]
    assert [bool(r["reason"]) for r in rows] == [False, True, True, False]
    assert "RDKit cannot parse" in rows[1]["reason"]
