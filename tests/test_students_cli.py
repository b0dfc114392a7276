"""`domainlm finetune`, `evaluate-qa` and `compare` end to end on tiny saved models, and bad-input errors."""

import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from unittest import mock

import pytest
import yaml

from domainlm.cli import main
from domainlm.qa import QAItem
from domainlm.qa.students import finetune
from domainlm.qa.students.generative import LoraStudent
from domainlm.training import CHECKPOINT
from student_helpers import save_tiny, student_config, write_qa_dir

TRAIN = [
    "--epochs",
    "2",
    "--lr",
    "1e-2",
    "--batch-size",
    "2",
    "--grad-accum",
    "1",
    "--max-length",
    "64",
    "--max-answer-tokens",
    "24",
    "--eval-batch-size",
    "4",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "qa").mkdir()
    return {
        "llama": save_tiny(root / "llama", "llama"),
        "bert": save_tiny(root / "bert", "bert"),
        "qa": write_qa_dir(root / "qa"),
        "root": root,
    }


def run_cli(*args) -> tuple[int, str]:
    """Run the real entry point in-process; returns (exit code, stdout + stderr with line wraps undone)."""
    out = io.StringIO()
    with (
        mock.patch.object(sys, "argv", ["domainlm", *map(str, args)]),
        redirect_stdout(out),
        redirect_stderr(out),
    ):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code or 0
    return code, " ".join(out.getvalue().split())


def augmented_qa_dir(path):
    """The QA data plus one rewritten item, with the manifest `augment` writes (mode and teacher)."""
    rewrite = QAItem(
        "r1",
        "is the drug a binding drug ?",
        "the drug affinity is a score",
        "yes",
        source="rewrite",
        parent_id="train-a",
    )
    write_qa_dir(path, extra_train=[rewrite])
    manifest = {"mode": "rewrite", "model": "teacher-7b", "data": {"split": {"split": "official", "fold": 0}}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def runs(setup):
    """Three students finetuned into one folder: lora (greedy, a checkpoint every step), seqcls-lora on
    augmented data and a tag student with balanced class weights."""
    root = setup["root"] / "runs"
    augmented = augmented_qa_dir(setup["root"] / "augmented")
    finetunes = [
        ("lora", setup["llama"], setup["qa"], ["--greedy", "--save-every", "1"]),
        ("seqcls-lora", setup["bert"], augmented, []),
        ("tag", setup["bert"], setup["qa"], ["--tag-length", "4", "--class-weight", "balanced"]),
    ]
    for method, model, data, extra in finetunes:
        args = ["--method", method, "--model", model, "--data", data, "--out", root / method, *extra]
        code, out = run_cli("finetune", *args, *TRAIN)
        assert code == 0, out
    return root


@pytest.fixture(scope="module")
def compared(runs):
    """`compare` over the three runs: (json rows, markdown table)."""
    table = runs.parent / "table"
    code, out = run_cli("compare", "--runs", str(runs / "*"), "--out", table)
    assert code == 0, out
    return json.loads((table / "compare.json").read_text())["rows"], (table / "compare.md").read_text()


def test_lora_run_holds_every_artifact_and_drops_its_checkpoints(runs):
    run = runs / "lora"
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.yaml",
        "train.log",
        "metrics.json",
        "metrics.md",
        "training_curve.png",
        "confusion_dev.png",
        "confusion_test.png",
        "predictions_test.jsonl",
    ):
        assert (run / name).is_file(), name
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
    assert not (run / CHECKPOINT).exists()  # removed once the run is complete


def test_lora_config_records_the_flags_and_no_augmentation(runs):
    config = yaml.safe_load((runs / "lora" / "config.yaml").read_text())
    assert (config["method"], config["lr"]) == ("lora", 1e-2)
    assert config["resolved"]["data"]["augmentation"] == "none"


def test_lora_metrics_equal_a_recomputation_from_the_written_predictions(runs):
    metrics = json.loads((runs / "lora" / "metrics.json").read_text())
    assert metrics["decoding"] == "greedy" and metrics["training"]["steps"] == 4
    for split in ("dev", "test"):
        rows = [json.loads(line) for line in (runs / "lora" / f"predictions_{split}.jsonl").open()]
        result = metrics["splits"][split]
        assert result["n"] == len(rows) == 3 == sum(map(sum, result["confusion"]))
        assert result["accuracy"] == pytest.approx(sum(r["label"] == r["predicted"] for r in rows) / 3)
        assert result["parse_failures"] == sum(not r["matched"] for r in rows)
        assert metrics["majority"][split]["accuracy"] == pytest.approx(1 / 3)
    assert "| test | 3 |" in (runs / "lora" / "metrics.md").read_text()


def test_evaluate_qa_reloads_base_and_adapter_and_repeats_the_generations(runs):
    run = runs / "lora"
    code, out = run_cli("evaluate-qa", "--run", run, "--split", "test", "--greedy")
    assert code == 0, out
    again = [json.loads(line) for line in (run / "eval-greedy" / "predictions_test.jsonl").open()]
    first = [json.loads(line) for line in (run / "predictions_test.jsonl").open()]
    assert again == first


def test_evaluate_qa_scores_answers_by_likelihood_and_never_fails_to_parse(runs):
    run = runs / "lora"
    code, out = run_cli(
        "evaluate-qa", "--run", run, "--split", "test", "--greedy", "--answer-scoring", "likelihood"
    )
    assert code == 0, out
    metrics = json.loads((run / "eval-likelihood" / "metrics.json").read_text())
    assert metrics["answer_scoring"] == "likelihood" and metrics["decoding"] == "likelihood"
    assert metrics["splits"]["test"]["parse_failures"] == 0
    rows = [json.loads(line) for line in (run / "eval-likelihood" / "predictions_test.jsonl").open()]
    assert all(r["predicted"] == max(r["scores"], key=r["scores"].get) for r in rows)
    parsed = json.loads((run / "metrics.json").read_text())
    assert parsed["answer_scoring"] == "parse"  # the finetune run's own evaluation parsed the text
    code, out = run_cli("evaluate-qa", "--run", run, "--answer-scoring", "vote")
    assert code != 0 and "answer scoring" in out


def test_tag_student_saves_its_tag_library_and_records_its_class_weights(runs):
    assert (runs / "tag" / "tags" / "tags.json").is_file()
    config = yaml.safe_load((runs / "tag" / "config.yaml").read_text())
    labels = [json.loads(line)["label"] for line in (runs.parent / "qa" / "train.jsonl").open()]
    weights = config["resolved"]["class_weights"]
    assert config["class_weight"] == "balanced" and set(weights) == {"yes", "no", "maybe"}
    assert sum(weights[label] for label in labels) == pytest.approx(len(labels))  # n / (3 x count) each


def test_compare_reads_augmentation_and_teacher_from_the_manifest(runs, compared):
    rows, _ = compared
    ours = {r["method"]: r for r in rows if r["kind"] == "ours"}
    assert ours.keys() == {"lora", "seqcls-lora", "tag"}
    lora, seqcls = ours["lora"], ours["seqcls-lora"]
    assert (lora["augmentation"], lora["teacher"], lora["data"]) == ("none", None, "qa")
    assert (seqcls["augmentation"], seqcls["teacher"], seqcls["data"]) == (
        "rewrite",
        "teacher-7b",
        "official test",
    )
    metrics = json.loads((runs / "lora" / "metrics.json").read_text())
    assert lora["accuracy"] == metrics["splits"]["test"]["accuracy"]


def test_compare_adds_majority_baselines_published_results_and_a_plot(runs, compared):
    rows, table = compared
    baselines = {r["data"]: r["accuracy"] for r in rows if r["kind"] == "baseline"}
    assert baselines == {"qa": pytest.approx(1 / 3), "official test": pytest.approx(1 / 3)}
    gpt4 = next(r for r in rows if r["student"] == "GPT-4 5-shot")
    assert gpt4["accuracy"] == 0.744 and gpt4["data"] == "official test"
    assert "| ours | bert | seqcls-lora | rewrite | teacher-7b | official test | - |" in table
    assert "| published | GPT-4 5-shot | - | - | - | official test | - | - | 0.744 |" in table
    assert (runs.parent / "table" / "compare.png").stat().st_size > 1000  # the plot beside the table


def test_lora_run_keeps_and_reports_its_lowest_dev_loss_state(runs):
    training = json.loads((runs / "lora" / "metrics.json").read_text())["training"]
    history = json.loads((runs / "lora" / "history.json").read_text())
    dev = [(h["val_loss"], h["step"]) for h in history if "val_loss" in h]
    assert len(dev) == 2  # once an epoch
    assert (training["best_dev_loss"], training["best_step"]) == min(dev)


def test_resume_finishes_an_interrupted_run(setup, tmp_path, monkeypatch):
    run = tmp_path / "run"
    config = student_config(setup["llama"], data=setup["qa"], epochs=2, lr=1e-2, batch_size=1, save_every=1)
    calls, real_loss = [], LoraStudent.loss

    def dying_loss(self, batch):  # killed during step 3, after step 2's checkpoint
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_loss(self, batch)

    monkeypatch.setattr(LoraStudent, "loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        finetune(config, run)
    monkeypatch.setattr(LoraStudent, "loss", real_loss)
    code, out = run_cli("finetune", "--out", run, "--model", setup["llama"], "--data", setup["qa"])
    assert code == 2 and "unfinished run" in out and "--resume" in out
    code, out = run_cli("finetune", "--out", run, "--resume", "--greedy")
    assert code == 0, out
    assert json.loads((run / "metrics.json").read_text())["training"]["steps"] == 6
    assert "after step 2 of 6" in (run / "train.log").read_text()  # says where it resumed


def test_bad_input_is_a_clear_error(setup, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "dev", "test"):
        (bad / f"{split}.jsonl").write_text('{"id": "1", "question": "q?", "context": "c", "label": "yes"}\n')
    (bad / "train.jsonl").write_text('{"id": "1", "question": "q?", "label": "yes"}\n')
    common = ["--out", tmp_path / "run", *TRAIN]
    cases = [
        (
            ["--model", setup["llama"], "--data", bad],
            "train.jsonl, line 1: missing or empty field(s) ['context']",
        ),
        (["--model", tmp_path / "nowhere", "--data", setup["qa"]], "not a model directory"),
        (["--model", "no-such-org/no-such-model", "--data", setup["qa"]], "cannot load model"),
        (["--model", setup["bert"], "--data", setup["qa"]], "is an encoder (bert)"),
        (["--model", setup["llama"], "--data", setup["qa"], "--method", "full"], "unknown method 'full'"),
        (["--model", setup["llama"], "--data", tmp_path / "missing"], "data directory not found"),
    ]
    for args, message in cases:
        code, out = run_cli("finetune", *args, *common)
        assert code == 2 and message in out, (args, out)
    code, out = run_cli("evaluate-qa", "--run", tmp_path / "nothing")
    assert code == 2 and "not a student run directory" in out
    code, out = run_cli("compare", "--runs", tmp_path / "nothing", "--out", tmp_path / "t")
    assert code == 2 and "no such run directory" in out


def test_compare_merges_runs_that_differ_only_in_their_seed(runs, tmp_path):
    import shutil

    accuracies = []
    for seed in (0, 1):
        run = shutil.copytree(runs / "seqcls-lora", tmp_path / "runs" / f"s{seed}")
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "seed": seed}))
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["splits"]["test"]["accuracy"] = 0.5 + 0.1 * seed
        accuracies.append(metrics["splits"]["test"]["accuracy"])
        (run / "metrics.json").write_text(json.dumps(metrics))
    code, out = run_cli("compare", "--runs", tmp_path / "runs", "--out", tmp_path / "table")
    assert code == 0, out
    rows = json.loads((tmp_path / "table" / "compare.json").read_text())["rows"]
    (ours,) = [r for r in rows if r["kind"] == "ours"]
    assert ours["seeds"] == 2 and ours["accuracy"] == pytest.approx(0.55)
    assert ours["accuracy_std"] == pytest.approx(0.0707, abs=1e-4) and ours["macro_f1_std"] == 0.0
    assert len(ours["run"]) == 2
    assert "| 0.550 ± 0.071 |" in (tmp_path / "table" / "compare.md").read_text()


def test_compare_keeps_runs_of_other_training_settings_apart_and_names_what_differs(runs, tmp_path):
    import shutil

    for name, changes in {"base": {}, "keepend": {"keep_context": "end", "lr": 0.02}}.items():
        run = shutil.copytree(runs / "seqcls-lora", tmp_path / "runs" / name)
        config = yaml.safe_load((run / "config.yaml").read_text())
        config.pop("class_weight", None)  # as a run from before the setting: its default, none
        (run / "config.yaml").write_text(yaml.safe_dump({**config, **changes}))
    code, out = run_cli("compare", "--runs", tmp_path / "runs", "--out", tmp_path / "table")
    assert code == 0, out
    rows = json.loads((tmp_path / "table" / "compare.json").read_text())["rows"]
    ours = [r for r in rows if r["kind"] == "ours"]
    assert [r["seeds"] for r in ours] == [1, 1]  # same seed, other settings: never merged as seeds
    lr = yaml.safe_load((runs / "seqcls-lora" / "config.yaml").read_text())["lr"]
    assert sorted(r["settings"] for r in ours) == [
        f"lr {lr}, keep_context start",
        "lr 0.02, keep_context end",
    ]
    assert "| lr 0.02, keep_context end |" in (tmp_path / "table" / "compare.md").read_text()
