import dataclasses
import json
import os
import pickle
import re

import numpy as np
import pytest

from cli_helpers import invoke, read_csv, write_csv
from domainlm.engine.template import Template
from domainlm.errors import DomainLMError, InputError
from domainlm.tasks import get_task
from domainlm.tasks.dta import PUBLISHED_DATASETS

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
    all_train = task.load(data_dir / "dta" / "davis", val_fold=None, affinity="none")
    assert (len(all_train.train), len(all_train.val), len(all_train.test)) == (25046, 0, 5010)
    assert max(e.label for e in all_train.train) == pytest.approx(10000.0)  # raw Kd in nM
    assert all_train.info["dataset"] == "davis"
    assert all_train.info["published_anchors"] == []  # published on pKd, not comparable with raw Kd
    fold4 = task.load(data_dir, val_fold=4)
    assert {e.id for e in fold4.test} == {e.id for e in all_train.test}
    small = task.load(data_dir, limit_train=100, limit_eval=20)
    assert (len(small.train), len(small.val), len(small.test)) == (100, 20, 20)
    assert {e.id for e in small.test} <= {e.id for e in all_train.test}
    assert len({e.fields["drug_id"] for e in small.train}) > 20  # a spread sample, not the first rows
    with pytest.raises(InputError, match="val_fold"):
        task.load(data_dir, val_fold=5)
    with pytest.raises(InputError, match="unknown affinity transform 'pkI'"):
        task.load(data_dir, affinity="pkI")
    with pytest.raises(
        DomainLMError, match=r"unknown option\(s\) \['transform'\]; it takes dataset, affinity"
    ):
        task.load(data_dir, transform="none")


def test_davis_is_recognised_and_shows_its_own_anchors(davis, data_dir):
    assert davis.info["dataset"] == "davis" and davis.info["affinity"].startswith("pkd:")
    assert get_task("dta").anchors_for(davis.info) == PUBLISHED_DATASETS["davis"].anchors
    assert get_task("dta").load(data_dir, dataset="davis", limit_eval=5).info["dataset"] == "davis"
    # a folder holding Davis, asked for as KIBA, is refused: it would be scaled and compared as KIBA
    with pytest.raises(InputError, match=r"davis/Y: dataset=kiba, but this Y is 68 drugs x 442 proteins"):
        get_task("dta").load(data_dir / "dta" / "davis", dataset="kiba")
    with pytest.raises(InputError, match=r"found neither .*/Y nor .*dta/kiba/Y"):
        get_task("dta").load(data_dir, dataset="kiba")


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
    """The tiny data set holds Kd in nM; domainlm does not know it, so it must say so."""
    return get_task("dta").load(root, **{"affinity": "pkd", **options})


KIBA_LIKE_Y = np.array(
    [
        [11.1, np.nan, 12.0, 11.5, 13.2],
        [12.4, 11.9, np.nan, 11.0, 12.2],
        [np.nan, 13.5, 12.8, 11.7, 11.3],
        [11.6, 12.1, 12.9, np.nan, 11.8],
        [13.0, np.nan, 11.4, 12.6, 12.3],
        [11.2, 12.7, 13.1, 11.9, 12.5],
    ]
)


def write_kiba_like(root):
    """6 drugs x 5 proteins of KIBA-like scores (no log needed), 5 unmeasured (NaN), so 25 measured; pickled
    with protocol 2 and latin1-readable, as DeepDTA's Python 2 files are."""
    write_dataset(
        root,
        ligands={
            f"D{i}": smi for i, smi in enumerate(["CCO", "CCN", "c1ccccc1O", "CC(=O)O", "CCCCCC", "CN"])
        },
        proteins={
            f"P{j}": seq for j, seq in enumerate(["MKVLAA", "ACDEFGHIK", "WYWYGG", "MKKLLV", "GGHHKK"])
        },
        train=[list(range(k, k + 4)) for k in range(0, 20, 4)],
        test=list(range(20, 25)),
    )
    (root / "Y").write_bytes(pickle.dumps(KIBA_LIKE_Y, protocol=2))
    return root


def test_kiba_like_folder_reads_scores_as_they_are_and_skips_unmeasured_pairs(tmp_path):
    folder = write_kiba_like(tmp_path / "kiba_like")
    data = get_task("dta").load(None, dataset=str(folder), affinity="none")
    measured = [(r, c) for r in range(6) for c in range(5) if not np.isnan(KIBA_LIKE_Y[r, c])]
    by_id = {e.id: e.label for e in data.train + data.val + data.test}
    assert by_id == {f"D{r}|P{c}": pytest.approx(KIBA_LIKE_Y[r, c]) for r, c in measured}
    assert [e.id for e in data.val] == [f"D{r}|P{c}" for r, c in measured[:4]]  # fold 0: row-major order
    assert [e.id for e in data.test] == [f"D{r}|P{c}" for r, c in measured[20:]]
    assert (len(data.train), data.info["n_measured"]) == (16, 25)
    assert data.info["dataset"] == str(folder) and data.info["affinity"].startswith("none:")
    assert get_task("dta").anchors_for(data.info) == ()  # no published results for an unknown folder
    with pytest.raises(InputError, match=r"kiba_like: say how to read this data set's affinities: affinity="):
        get_task("dta").load(None, dataset=str(folder))
    with pytest.raises(InputError, match=r"nowhere: dataset=.*nowhere is neither a data set domainlm knows"):
        get_task("dta").load(None, dataset=str(tmp_path / "nowhere"), affinity="none")


def test_a_data_set_of_kibas_size_is_recognised_as_kiba(tmp_path, monkeypatch):
    """Recognised by size (2,111 x 229, 118,254 measured, as published); shrunk here to the tiny one's."""
    kiba = dataclasses.replace(PUBLISHED_DATASETS["kiba"], shape=KIBA_LIKE_Y.shape, n_measured=25)
    monkeypatch.setitem(PUBLISHED_DATASETS, "kiba", kiba)
    root = tmp_path / "shared"
    write_kiba_like(root / "dta" / "kiba")
    data = get_task("dta").load(root, dataset="kiba")  # KIBA's own scale: no affinity= needed
    assert data.info["dataset"] == "kiba" and data.info["affinity"].startswith("none:")
    assert data.test[0].label == pytest.approx(KIBA_LIKE_Y[5, 0])  # measured entry 20, read as is
    assert get_task("dta").anchors_for(data.info) == kiba.anchors
    assert get_task("dta").load(root / "dta" / "kiba").info["dataset"] == "kiba"  # found by its size


def test_a_pickle_that_is_no_array_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    root = write_dataset(tmp_path / "evil")
    (root / "Y").write_bytes(pickle.dumps(Payload(), protocol=2))
    with pytest.raises(
        InputError, match=r"evil/Y: cannot read a pickled numeric matrix .*system is not part"
    ):
        load(root)
    assert not marker.exists()


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


@pytest.fixture(scope="module")
def dta_run(model_dir, tmp_path_factory):
    """`domainlm train --task dta` for one epoch on the tiny data set: the run directory."""
    root = tmp_path_factory.mktemp("dta")
    dataset = [
        "--task-option",
        f"dataset={write_kiba_like(root / 'kiba_like')}",
        "--task-option",
        "affinity=none",
    ]
    args = ["--task", "dta", "--data-dir", root, *dataset, "--model", model_dir("bert")]
    res = invoke("train", *args, "--out", root / "run", "--epochs", 1, "--batch-size", 2, "--grad-accum", 1)
    assert res.exit_code == 0, res.output
    return root / "run"


def predict_pairs(run, rows, tmp_path):
    """`domainlm predict` on protein-drug rows written to a CSV: (result, output path)."""
    pairs = write_csv(tmp_path / "pairs.csv", rows, ("protein", "smiles"))
    return invoke(
        "predict", "--run", run, "--input", pairs, "--out", tmp_path / "pred.csv"
    ), tmp_path / "pred.csv"


def test_predict_scores_new_protein_drug_pairs(dta_run, tmp_path):
    res, out = predict_pairs(dta_run, [("MKVLA", "CCO"), ("wygg", "c1ccccc1")], tmp_path)
    assert res.exit_code == 0, res.output
    rows = read_csv(out)
    assert [(r["protein"], r["smiles"]) for r in rows] == [
        ("MKVLA", "CCO"),
        ("WYGG", "c1ccccc1"),
    ]  # upper-cased
    assert all(np.isfinite(float(r["prediction"])) for r in rows)


@pytest.mark.parametrize(
    "bad, message",
    [
        (("MKVL", "C1CC(("), r"line 3: RDKit cannot parse"),
        (("MK9L", "CCO"), r"line 3: protein sequence holds non-standard residue\(s\) '9'"),
    ],
)
def test_predict_names_a_bad_row_by_its_line(dta_run, tmp_path, bad, message):
    res, out = predict_pairs(dta_run, [("MKVL", "CCO"), bad], tmp_path)
    assert res.exit_code == 2  # a DomainLMError, reported cleanly
    assert re.search(message, " ".join(res.output.split())), res.output
    assert not out.exists()


@pytest.mark.parametrize("recognised", [False, True])
def test_bench_on_a_kiba_like_folder_shows_that_data_sets_anchors(tmp_path, monkeypatch, recognised):
    """The anchors beside the rows are the loaded data set's; the recognised case also refits."""
    folder = write_kiba_like(tmp_path / "kiba_like")
    if recognised:  # as if it had KIBA's published size
        kiba = dataclasses.replace(PUBLISHED_DATASETS["kiba"], shape=KIBA_LIKE_Y.shape, n_measured=25)
        monkeypatch.setitem(PUBLISHED_DATASETS, "kiba", kiba)
    out = tmp_path / "bench"
    options = ["--task-option", f"dataset={folder}", "--task-option", "affinity=none"]
    options += ["--methods", "mean,gradient_boosting", *(["--refit-train-val"] if recognised else [])]
    res = invoke("bench", "--task", "dta", "--data", tmp_path, *options, "--out", out)
    assert res.exit_code == 0, res.output
    record = json.loads((out / "dta.json").read_text())
    markdown = (out / "dta.md").read_text()
    assert [r["method"] for r in record["rows"]] == ["mean", "gradient_boosting"]
    for row in record["rows"]:
        assert (row["n_train"], row["n_val"], row["n_test"]) == (16, 4, 5)
        assert (row["refit"], row["n_fit"]) == ((True, 20) if recognised else (False, 16))
    assert record["settings"]["refit_train_val"] is recognised
    if recognised:
        assert [a["model"] for a in record["published_anchors"]] == ["DeepDTA (KIBA)", "GraphDTA (KIBA)"]
        assert "* DeepDTA (KIBA): test_mse 0.194, test_ci 0.863" in markdown
        assert "Classical rows refit on train + val" in markdown
        assert "published: DeepDTA (KIBA): test_mse 0.194" in res.output
    else:
        assert "published_anchors" not in record and "beats" not in record
        assert f"Published anchors: none for this data set ({folder})." in markdown
        assert "published: none for this data set" in res.output
    assert "Davis" not in markdown + res.output


def test_a_dataset_path_needs_no_data_dir_and_is_saved_absolute(tmp_path, monkeypatch):
    from domainlm.tasks.resolve import TaskSource, resolve_task

    write_kiba_like(tmp_path / "kiba_like")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DOMAINLM_DATA", raising=False)
    source = TaskSource(preset="dta", task_options={"dataset": "kiba_like", "affinity": "none"})
    assert source.task_options["dataset"] == str(tmp_path / "kiba_like")
    _, data = resolve_task(source)
    assert data.info["data_dir"] == str(tmp_path / "kiba_like") and len(data.train) > 0
    with pytest.raises(InputError, match="no data directory given"):
        resolve_task(TaskSource(preset="dta"))
