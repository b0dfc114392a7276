"""`domainlm bench` end to end on tiny data and a tiny saved model: tables, rows, plots, resume."""

import json

import pytest
from typer.testing import CliRunner

from domainlm.bench import ALL_METHODS, BenchSettings, run_bench
from domainlm.errors import DomainLMError
from tiny_models import tiny_model

SMILES = ["C" * (i % 7 + 1) + "N" * (i % 3) + "O" * (i % 2) + "c1ccccc1" * (i % 4 == 0) for i in range(48)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    (root / "data" / "corpora").mkdir(parents=True)
    ligands = {f"L{i}": s for i, s in enumerate(dict.fromkeys(SMILES))}
    (root / "data" / "corpora" / "dtc_ligands.json").write_text(json.dumps(ligands))
    model, tokenizer = tiny_model("bert")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def settings(root, **changes):
    base = dict(
        task="qed",
        model=str(root / "model"),
        data_dir=str(root / "data"),
        epochs=1,
        batch_size=8,
        grad_accum=1,
    )
    return BenchSettings(**{**base, **changes})


def test_every_method_writes_markdown_json_rows_and_plots(setup, monkeypatch, tmp_path):
    monkeypatch.setenv("DOMAINLM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "results"
    rows = run_bench(settings(setup), out, log=lambda _: None)
    assert [r["method"] for r in rows] == list(ALL_METHODS)
    record = json.loads((out / "qed.json").read_text())
    assert record["task"] == "qed" and len(record["rows"]) == len(ALL_METHODS)
    for row in record["rows"]:
        for key in ("method", "test_mse", "test_mae", "test_pearson", "test_spearman", "trainable_params"):
            assert key in row
        assert row["seed"] == 0 and row["seconds"] >= 0
        n = len(set(SMILES))
        assert (row["n_train"], row["n_val"], row["n_test"]) == (
            int(0.8 * n),
            int(0.1 * n),
            n - int(0.8 * n) - int(0.1 * n),
        )
        assert row["test_mse"] is not None and row["test_mse"] >= 0
    by_method = {r["method"]: r for r in record["rows"]}
    assert by_method["mean"]["trainable_params"] is None
    assert by_method["linear_probe"]["trainable_params"] == 33  # hidden 32 + bias
    assert by_method["prompt_tuning"]["trainable_params"] == 20 * 32 + 33  # 2 tags x 10 vectors' worth
    assert by_method["tags"]["trainable_params"] == by_method["prompt_tuning"]["trainable_params"]
    assert by_method["prompt_tuning"]["lr"] == 1e-3 and by_method["tags"]["lr"] == 1e-4
    table = (out / "qed.md").read_text()
    assert (
        "| method | test_mse | test_mae | test_pearson | test_spearman | trainable_params | seconds |"
        in table
    )
    assert all(f"| {m} |" in table for m in ALL_METHODS)
    assert {p.name for p in (out / "qed" / "plots").glob("*.png")} == {f"{m}__test.png" for m in ALL_METHODS}
    runs = {p.parent.name for p in (out / "qed" / "runs").glob("*/*curve*.png")}
    assert runs == {"prompt_tuning__test", "lora__test", "tags__test"}

    # Resume: nothing left to do, nothing rerun.
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "qed" / "rows").glob("*.json")}
    run_bench(settings(setup), out, resume=True, log=lambda _: None)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "qed" / "rows").glob("*.json")}
    with pytest.raises(DomainLMError, match="--resume"):
        run_bench(settings(setup), out, log=lambda _: None)
    with pytest.raises(DomainLMError, match="seed: 0 -> 1"):
        run_bench(settings(setup, seed=1), out, resume=True, log=lambda _: None)


def test_resume_runs_only_missing_methods_and_overwrite_starts_again(setup, monkeypatch, tmp_path):
    monkeypatch.setenv("DOMAINLM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "results"
    run_bench(settings(setup, methods=("mean",)), out, log=lambda _: None)
    logged = []
    rows = run_bench(settings(setup, methods=("mean", "random_forest")), out, resume=True, log=logged.append)
    assert [r["method"] for r in rows] == ["mean", "random_forest"]
    assert not any(m.startswith("qed/test: mean") for m in logged)
    rows = run_bench(settings(setup, methods=("nearest_neighbour",)), out, overwrite=True, log=lambda _: None)
    assert [r["method"] for r in rows] == ["nearest_neighbour"]
    assert json.loads((out / "qed.json").read_text())["rows"][0]["method"] == "nearest_neighbour"


def test_cli(setup, monkeypatch, tmp_path):
    from domainlm.cli import _register, app

    monkeypatch.setenv("DOMAINLM_CACHE", str(tmp_path / "cache"))
    _register()
    args = ["bench", "--task", "qed", "--model", str(setup / "model"), "--data", str(setup / "data")]
    args += ["--out", str(tmp_path / "r"), "--methods", "mean,linear_probe", "--limit-train", "20"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "r" / "qed.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["mean", "linear_probe"] and rows[0]["n_train"] == 20
    assert "linear_probe" in result.output


def test_bad_settings_are_refused():
    with pytest.raises(DomainLMError, match="unknown method"):
        BenchSettings(task="qed", methods=("mean", "svm"))
    with pytest.raises(DomainLMError, match="limit_train"):
        BenchSettings(task="qed", limit_train=0)


def test_a_failing_method_does_not_cost_the_others(setup, monkeypatch, tmp_path):
    from domainlm.bench import Bench

    def broken(self, method, data):
        if method == "nearest_neighbour":
            raise DomainLMError("boom")
        return original(self, method, data)

    original = Bench.run_classical
    monkeypatch.setattr(Bench, "run_classical", broken)
    out = tmp_path / "results"
    with pytest.raises(DomainLMError, match="nearest_neighbour/test: boom"):
        run_bench(
            settings(setup, methods=("mean", "nearest_neighbour", "random_forest")), out, log=lambda _: None
        )
    rows = json.loads((out / "qed.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["mean", "random_forest"]


def synergy_dataset(root):
    """Six drugs on three cell lines, every pair in one fold (as in O'Neil), three or more rows a fold."""
    import csv
    import itertools

    drugs = {"A": "CCO", "B": "c1ccccc1", "C": "CC(=O)O", "D": "CCN", "E": "CCCC", "F": "OCCO"}
    root.mkdir(parents=True)
    with open(root / "oneil_drugs.csv", "w", newline="") as f:
        csv.writer(f).writerows([("name", "smiles"), *drugs.items()])
    rows = [("", "drug_a_name", "drug_b_name", "cell_line", "synergy", "fold")]
    for i, (a, b) in enumerate(itertools.combinations(drugs, 2)):
        for j, cell in enumerate(("X", "Y", "Z")):
            rows.append((f"{a}_{b}_{cell}", a, b, cell, str((i * 7 + j * 3) % 11 - 5), str(i % 5)))
    with open(root / "oneil_labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def test_killed_fold_bench_resumes_without_redoing_finished_folds(monkeypatch, tmp_path):
    from domainlm.bench import Bench

    data = synergy_dataset(tmp_path / "synergy")
    config = BenchSettings(task="synergy", data_dir=str(data), methods=("mean", "random_forest"))
    out = tmp_path / "results"
    original, ran = Bench.run_one, []

    def killed_in_fold2(self, method, fold, data):
        if fold == "fold2":
            raise KeyboardInterrupt  # what Ctrl-C or a kill signal turned into an exception looks like
        ran.append((method, fold))
        return original(self, method, fold, data)

    monkeypatch.setattr(Bench, "run_one", killed_in_fold2)
    with pytest.raises(KeyboardInterrupt):
        run_bench(config, out, log=lambda _: None)
    assert ran == [(m, f) for f in ("fold0", "fold1") for m in ("mean", "random_forest")]

    ran.clear()
    monkeypatch.setattr(Bench, "run_one", lambda self, *a: (ran.append(a[:2]), original(self, *a))[1])
    logged = []
    rows = run_bench(config, out, resume=True, log=logged.append)
    assert ran == [(m, f) for f in ("fold2", "fold3", "fold4") for m in ("mean", "random_forest")]
    assert "synergy/fold0: every method already finished" in logged
    assert len(rows) == 10

    record = json.loads((out / "synergy.json").read_text())
    forest = next(s for s in record["summary"] if s["method"] == "random_forest")
    per_fold = [r["test_mae"] for r in record["rows"] if r["method"] == "random_forest"]
    assert forest["folds"] == 5 and forest["test_mae"] == pytest.approx(sum(per_fold) / 5)
    assert forest["test_mae_std"] > 0
    assert record["published_anchors"][0]["test_pearson"] == 0.73
    markdown = (out / "synergy.md").read_text()
    assert "Mean +- std over folds" in markdown and "DeepSynergy" in markdown
    assert (out / "synergy" / "plots" / "folds_mae.png").stat().st_size > 0


def test_anchor_comparison_needs_every_reported_metric():
    from domainlm.bench import PUBLISHED_ANCHORS, Bench

    anchors = PUBLISHED_ANCHORS["dta"]
    rows = [
        {"method": "a", "fold": "test", "test_mse": 0.25, "test_ci": 0.88},  # beats DeepDTA only
        {"method": "b", "fold": "test", "test_mse": 0.20, "test_ci": 0.85},  # lower MSE, worse CI: none
        {"method": "c", "fold": "test", "test_mse": None, "test_ci": 0.95},
    ]
    assert Bench.beats(rows, anchors) == {"a/test": ["DeepDTA (Davis)"]}
