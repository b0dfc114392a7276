import json
import pickle
import re

import numpy as np
import pytest

from domainlm.engine.template import Template
from domainlm.errors import InputError
from domainlm.tasks import get_task

DAVIS_MEASURED = 68 * 442  # Davis has every pair measured


@pytest.fixture(scope="module")
def davis(data_dir):
    return get_task("dta").load(data_dir)


def test_davis_loads_with_the_deepdta_protocol(davis, data_dir):
    assert (davis.info["n_drugs"], davis.info["n_proteins"]) == (68, 442)
    assert davis.info["n_measured"] == DAVIS_MEASURED
    assert (len(davis.train), len(davis.val), len(davis.test)) == (20036, 5010, 5010)
    assert len(davis.train) + len(davis.val) + len(davis.test) == DAVIS_MEASURED
    ids = [{e.id for e in split} for split in (davis.train, davis.val, davis.test)]
    assert sum(map(len, ids)) == DAVIS_MEASURED  # no pair in two splits, none twice
    labels = np.array([e.label for e in davis.train + davis.val + davis.test])
    assert labels.min() == pytest.approx(5.0)  # Kd 10,000 nM, Davis' "no binding" floor
    assert 10.5 < labels.max() < 11.0 and 5.3 < labels.mean() < 5.6
    assert not davis.skipped


def test_davis_examples_fill_the_template(davis):
    example = davis.test[0]
    assert example.group == example.fields["protein_id"]
    assert example.id == f"{example.fields['drug_id']}|{example.fields['protein_id']}"
    spec = get_task("dta")
    parts = Template(spec.template).render(example.fields)
    spans = {p.domain: p.value for p in parts if p.kind == "data"}
    assert spans == {"Protein": example.fields["protein"], "SMILES": example.fields["smiles"]}
    assert spec.metrics == ("mse", "ci", "rm2", "pearson", "spearman")


def test_davis_options(data_dir):
    task = get_task("dta")
    all_train = task.load(data_dir / "dta" / "davis", val_fold=None, transform="none")
    assert (len(all_train.train), len(all_train.val), len(all_train.test)) == (25046, 0, 5010)
    assert max(e.label for e in all_train.train) == pytest.approx(10000.0)  # raw Kd in nM
    fold4 = task.load(data_dir, val_fold=4)
    assert {e.id for e in fold4.test} == {e.id for e in all_train.test}
    small = task.load(data_dir, limit_train=100, limit_eval=20)
    assert (len(small.train), len(small.val), len(small.test)) == (100, 20, 20)
    assert {e.id for e in small.test} <= {e.id for e in all_train.test}
    assert len({e.fields["drug_id"] for e in small.train}) > 20  # a spread sample, not the first rows
    with pytest.raises(InputError, match="val_fold"):
        task.load(data_dir, val_fold=5)
    with pytest.raises(InputError, match="unknown affinity transform"):
        task.load(data_dir, transform="pkI")


def write_dataset(root, *, Y=None, ligands=None, proteins=None, train=None, test=None):
    """A 2-drug x 3-protein DeepDTA-layout data set; entry (0, 1) is not measured, so 5 are."""
    ligands = ligands or {"d0": "CCO", "d1": "c1ccccc1O"}
    proteins = proteins or {"p0": "MKVL", "p1": "ACDEX", "p2": "WYGG"}
    Y = np.array([[10.0, np.nan, 1000.0], [5.0, 50.0, 10000.0]]) if Y is None else Y
    (root / "folds").mkdir(parents=True)
    (root / "Y").write_bytes(pickle.dumps(Y))
    (root / "ligands_can.txt").write_text(json.dumps(ligands))
    (root / "proteins.txt").write_text(json.dumps(proteins))
    (root / "folds/train_fold_setting1.txt").write_text(json.dumps(train or [[0], [1, 2], [3]]))
    (root / "folds/test_fold_setting1.txt").write_text(json.dumps(test or [4]))
    return root


def load(root, **options):
    return get_task("dta").load(root, **options)


def test_tiny_dataset_indexes_measured_entries_row_major(tmp_path):
    data = load(write_dataset(tmp_path / "tiny"))
    # measured entries in row-major order: (d0,p0) (d0,p2) (d1,p0) (d1,p1) (d1,p2)
    assert [e.id for e in data.val] == ["d0|p0"]
    assert [e.id for e in data.train] == ["d0|p2", "d1|p0", "d1|p1"]
    assert [e.id for e in data.test] == ["d1|p2"]
    assert data.test[0].label == pytest.approx(5.0) and data.val[0].label == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"Y": np.ones((3, 3))}, r"Y has shape \(3, 3\) but .* 2 drugs .* 3 proteins"),
        ({"train": [[0], [1, 2], [7]]}, r"train fold 2: index 7 is out of range: Y has 5 measured entries"),
        ({"train": [[0], [1, 2], [2]]}, r"train fold 2: index 2 appears also in train fold 1"),
        ({"test": [3]}, r"test fold: index 3 appears also in train fold 2"),
        ({"train": [[0, 0], [1], [2]]}, r"train fold 0: index 0 appears twice"),
        ({"train": [0, 1, 2]}, r"expected a JSON list of lists"),
        ({"ligands": {"d0": "CCO", "d1": "C1CC(("}}, r"ligands_can.txt, drug d1: RDKit cannot parse"),
        (
            {"proteins": {"p0": "MKVL", "p1": "AC1DE", "p2": "WYGG"}},
            r"protein p1: .*non-standard residue\(s\) '1'",
        ),
        ({"proteins": {"p0": "MKVL", "p1": " ", "p2": "WYGG"}}, r"protein p1: empty protein sequence"),
        (
            {"Y": np.array([[0.0, np.nan, 1.0], [1.0, 1.0, 1.0]])},
            r"drug d0, protein p0: affinity 0.0 is not positive",
        ),
    ],
)
def test_bad_datasets_name_the_item(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        load(write_dataset(tmp_path / "bad", **kwargs))


def test_skip_invalid_counts_skipped_pairs(tmp_path):
    root = write_dataset(tmp_path / "bad", ligands={"d0": "CCO", "d1": "not a smiles"})
    data = load(root, skip_invalid=True)
    assert data.skipped["invalid_smiles"] == 3  # d1 has three measured pairs
    assert sorted(e.id for e in data.train + data.val + data.test) == ["d0|p0", "d0|p2"]


def test_missing_files_are_named(tmp_path):
    with pytest.raises(InputError, match="found neither"):
        load(tmp_path)
    root = write_dataset(tmp_path / "tiny")
    (root / "folds/test_fold_setting1.txt").unlink()
    with pytest.raises(InputError, match="test_fold_setting1.txt: fold file not found"):
        load(root)


def test_train_then_predict_new_pairs_and_refuse_bad_rows(tmp_path):
    """`domainlm predict` on a dta run scores protein-drug rows from a CSV; a bad row is named by line."""
    import csv

    from typer.testing import CliRunner

    from domainlm.cli import _register, app
    from tiny_models import tiny_model

    model, tokenizer = tiny_model("bert")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = write_dataset(tmp_path / "tiny")
    _register()

    def invoke(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code in (0, 2), result.output  # 2: a DomainLMError, reported cleanly
        return result

    run = tmp_path / "run"
    res = invoke(
        "train",
        "--task",
        "dta",
        "--data-dir",
        data,
        "--model",
        tmp_path / "model",
        "--out",
        run,
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
    )
    assert res.exit_code == 0, res.output

    def write(rows):
        path = tmp_path / "pairs.csv"
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([("protein", "smiles"), *rows])
        return path

    out = tmp_path / "pred.csv"
    res = invoke(
        "predict", "--run", run, "--input", write([("MKVLA", "CCO"), ("wygg", "c1ccccc1")]), "--out", out
    )
    assert res.exit_code == 0, res.output
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(np.isfinite(float(r["prediction"])) for r in rows)

    for bad, message in (
        (("MKVL", "C1CC(("), r"line 3: RDKit cannot parse"),
        (("MK9L", "CCO"), r"line 3: protein sequence holds non-standard residue\(s\) '9'"),
    ):
        res = invoke("predict", "--run", run, "--input", write([("MKVL", "CCO"), bad]), "--out", out)
        assert res.exit_code == 2
        assert re.search(message, " ".join(res.output.split())), res.output
