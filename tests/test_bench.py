"""`domainlm bench` end to end on tiny data and a tiny saved model: tables, rows, plots, resume."""

import json
import shutil

import numpy as np
import pytest

from cli_helpers import invoke, read_csv
from domainlm.bench import ALL_METHODS, BenchSettings, run_bench
from domainlm.errors import DomainLMError
from domainlm.tasks import get_task
from tiny_models import tiny_model

SMILES = ["C" * (i % 7 + 1) + "N" * (i % 3) + "O" * (i % 2) + "c1ccccc1" * (i % 4 == 0) for i in range(48)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A data directory with the QED ligands and a saved tiny BERT."""
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


@pytest.fixture(scope="module")
def bench(setup):
    """Every method once on qed: the output directory."""
    out = setup / "results"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOMAINLM_CACHE", str(setup / "cache"))
        run_bench(settings(setup), out, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def rows(bench) -> dict[str, dict]:
    return {r["method"]: r for r in json.loads((bench / "qed.json").read_text())["rows"]}


@pytest.fixture(scope="module")
def labels(setup) -> dict[str, np.ndarray]:
    """The qed split the bench ran on, loaded again: split name -> labels."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOMAINLM_CACHE", str(setup / "cache"))
        data = get_task("qed").load(setup / "data")
    return {name: np.array([ex.label for ex in examples]) for name, examples in data.splits().items()}


def test_every_method_has_one_row_on_the_same_split(bench):
    record = json.loads((bench / "qed.json").read_text())
    assert record["task"] == "qed" and [r["method"] for r in record["rows"]] == list(ALL_METHODS)
    n = len(set(SMILES))
    split = (int(0.8 * n), int(0.1 * n), n - int(0.8 * n) - int(0.1 * n))
    for row in record["rows"]:
        assert (row["n_train"], row["n_val"], row["n_test"]) == split and row["seed"] == 0


def test_trainable_params_and_learning_rates_per_method(rows):
    assert rows["mean"]["trainable_params"] is None
    assert rows["linear_probe"]["trainable_params"] == 33  # hidden 32 + bias
    assert rows["prompt_tuning"]["trainable_params"] == 20 * 32 + 33  # 2 tags x 10 vectors' worth
    assert rows["tags"]["trainable_params"] == rows["prompt_tuning"]["trainable_params"]
    assert rows["prompt_tuning"]["lr"] == 1e-3 and rows["tags"]["lr"] == 1e-4


def test_tag_row_metrics_equal_a_recomputation_from_its_predictions(bench, rows, labels):
    predictions = read_csv(bench / "qed" / "runs" / "tags__test" / "predictions_test.csv")
    true, pred = (np.array([float(r[c]) for r in predictions]) for c in ("true", "prediction"))
    np.testing.assert_allclose(true, labels["test"], rtol=1e-6)
    row = rows["tags"]
    assert row["test_mse"] == pytest.approx(np.mean((true - pred) ** 2), rel=1e-5)
    assert row["test_mae"] == pytest.approx(np.mean(np.abs(true - pred)), rel=1e-5)
    assert row["test_pearson"] == pytest.approx(np.corrcoef(true, pred)[0, 1], rel=1e-4)


def test_mean_row_is_the_training_mean_predictor(rows, labels):
    mean = labels["train"].mean()
    assert rows["mean"]["test_mse"] == pytest.approx(np.mean((labels["test"] - mean) ** 2), rel=1e-6)
    assert rows["mean"]["test_mae"] == pytest.approx(np.mean(np.abs(labels["test"] - mean)), rel=1e-6)
    assert rows["mean"]["test_pearson"] is None  # undefined for a constant prediction: n/a, never NaN


@pytest.mark.parametrize("method", ["random_forest", "linear_probe"])
def test_a_trained_method_beats_the_mean_predictor(rows, method):
    assert rows[method]["test_mse"] < 0.5 * rows["mean"]["test_mse"]


def test_markdown_table_shows_the_json_values(bench, rows):
    table = (bench / "qed.md").read_text()
    header = "| method | test_mse | test_mae | test_pearson | test_spearman | trainable_params | seconds |"
    assert header in table
    for method, row in rows.items():
        assert f"| {method} | {row['test_mse']:.4g} | {row['test_mae']:.4g} |" in table


def test_plots_for_every_method_and_curves_for_the_trained_ones(bench):
    assert {p.name for p in (bench / "qed" / "plots").glob("*.png")} == {
        f"{m}__test.png" for m in ALL_METHODS
    }
    runs = {p.parent.name for p in (bench / "qed" / "runs").glob("*/*curve*.png")}
    assert runs == {"prompt_tuning__test", "lora__test", "tags__test"}


def test_resume_with_every_row_done_reruns_nothing(setup, bench, tmp_path):
    out = shutil.copytree(bench, tmp_path / "results")
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "qed" / "rows").glob("*.json")}
    logged = []
    run_bench(settings(setup), out, resume=True, log=logged.append)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "qed" / "rows").glob("*.json")}
    assert logged == ["qed/test: every method already finished"]


def test_rerun_needs_resume_and_the_same_settings(setup, bench):
    with pytest.raises(DomainLMError, match="--resume"):
        run_bench(settings(setup), bench, log=lambda _: None)
    with pytest.raises(DomainLMError, match="seed: 0 -> 1"):
        run_bench(settings(setup, seed=1), bench, resume=True, log=lambda _: None)


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
    monkeypatch.setenv("DOMAINLM_CACHE", str(tmp_path / "cache"))
    args = ["bench", "--task", "qed", "--model", str(setup / "model"), "--data", str(setup / "data")]
    args += ["--out", str(tmp_path / "r"), "--methods", "mean,linear_probe", "--limit-train", "20"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "Made by:" in (tmp_path / "r" / "qed.md").read_text()  # the command line, for rerunning it
    rows = json.loads((tmp_path / "r" / "qed.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["mean", "linear_probe"] and rows[0]["n_train"] == 20
    assert "linear_probe" in result.output


def test_tag_options_are_the_tag_rows_own_settings(setup, monkeypatch, tmp_path):
    monkeypatch.setenv("DOMAINLM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "results"
    run_bench(settings(setup, methods=("mean",)), out, log=lambda _: None)
    tuned = {"lr": 3e-3, "head_init": "standardized", "readout": "mean", "evals_per_epoch": 1}
    # tag-only settings (frozen domain tags, options) do not bind the rows of other methods
    tag_row = settings(setup, methods=("tags",), tag_options=tuned, train_domain_tags=False, isolate=True)
    rows = run_bench(tag_row, out, resume=True, log=print)
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"mean", "tags"} and by_method["tags"]["lr"] == 3e-3
    record = json.loads((out / "qed.json").read_text())
    assert record["settings"]["tag_options"] == tuned
    run = json.loads((out / "qed" / "runs" / "tags__test" / "metrics.json").read_text())
    assert run["head"]["readout"] == "mean" and run["head"]["head_init"] == "standardized"
    # the tag row is then bound to those options
    with pytest.raises(DomainLMError, match="tag_options"):
        run_bench(settings(setup, methods=("tags",)), out, resume=True, log=lambda _: None)
    with pytest.raises(DomainLMError, match="unknown tag option"):
        settings(setup, tag_options={"learning_rate": 1e-3})


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
    from domainlm.bench import Bench
    from domainlm.tasks.dta import PUBLISHED_DATASETS

    anchors = PUBLISHED_DATASETS["davis"].anchors
    rows = [
        {"method": "a", "fold": "test", "test_mse": 0.25, "test_ci": 0.88},  # beats DeepDTA only
        {"method": "b", "fold": "test", "test_mse": 0.20, "test_ci": 0.85},  # lower MSE, worse CI: none
        {"method": "c", "fold": "test", "test_mse": None, "test_ci": 0.95},
    ]
    assert Bench.beats(rows, anchors) == {"a/test": ["DeepDTA (Davis)"]}


def test_key_value_options_read_numbers_as_numbers():
    from domainlm.cli.options import parse_key_values

    items = ["lr=1e-3", "epochs=4", "head_init=probe", "max_chars=none", "x=nan"]
    got = parse_key_values(items, "--tag-option")
    assert got == {"lr": 1e-3, "epochs": 4, "head_init": "probe", "max_chars": None, "x": "nan"}


def test_a_signal_stops_the_whole_bench_and_resume_continues_the_baseline(setup, rows, monkeypatch, tmp_path):
    import os
    import signal

    from domainlm.baselines.peft_heads import HeadTraining
    from domainlm.interrupts import TrainingInterrupted

    monkeypatch.setenv("DOMAINLM_CACHE", str(setup / "cache"))
    out, calls, original = tmp_path / "results", [], HeadTraining.loss

    def terminated_at_third_batch(self, batch):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch)

    monkeypatch.setattr(HeadTraining, "loss", terminated_at_third_batch)
    logged = []
    config = settings(setup, methods=("prompt_tuning", "lora"))
    with pytest.raises(TrainingInterrupted, match="after step 3"):
        run_bench(config, out, log=logged.append)
    assert not any("lora ..." in m for m in logged)  # the next method never started
    checkpoint = out / "qed" / "runs" / "prompt_tuning__test" / "checkpoint.pt"
    assert checkpoint.exists()

    monkeypatch.setattr(HeadTraining, "loss", original)
    logged.clear()
    resumed = {r["method"]: r for r in run_bench(config, out, resume=True, log=logged.append)}
    assert any("resumed from" in m and "after step 3" in m for m in logged)
    assert not checkpoint.exists()  # the row holds the result
    for method in ("prompt_tuning", "lora"):  # exactly what an uninterrupted bench gave
        assert resumed[method]["test_mse"] == pytest.approx(rows[method]["test_mse"], rel=1e-5)
