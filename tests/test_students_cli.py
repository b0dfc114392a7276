"""`domainlm finetune`, `evaluate-qa` and `compare` end to end on tiny saved models, and bad-input errors."""

import json
import sys

import pytest
import yaml

from domainlm.cli import main
from domainlm.qa import QAItem
from domainlm.qa.students import finetune
from domainlm.qa.students.training import TrainingInterrupted
from test_students_models import config as student_config
from test_students_models import save_tiny, write_qa_dir

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


def run_cli(capsys, *args) -> tuple[int, str]:
    """Run the real entry point in-process; returns (exit code, stdout + stderr with line wraps undone)."""
    old = sys.argv
    sys.argv = ["domainlm", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())


def test_finetune_evaluate_compare(setup, tmp_path, capsys):
    run = tmp_path / "lora"
    code, out = run_cli(
        capsys,
        "finetune",
        "--method",
        "lora",
        "--model",
        setup["llama"],
        "--data",
        setup["qa"],
        "--out",
        run,
        "--greedy",
        "--save-every",
        "1",
        *TRAIN,
    )
    assert code == 0, out
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
    assert not (run / "checkpoints").exists()  # removed once the run is complete
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (
        config["method"] == "lora"
        and config["lr"] == 1e-2
        and config["resolved"]["data"]["augmentation"] == "none"
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["decoding"] == "greedy" and metrics["training"]["steps"] == 4
    for split in ("dev", "test"):
        result = metrics["splits"][split]
        assert result["n"] == 3 == sum(map(sum, result["confusion"]))
        assert 0 <= result["parse_failures"] <= 3
        assert metrics["majority"][split]["accuracy"] == pytest.approx(1 / 3)
    assert "| test | 3 |" in (run / "metrics.md").read_text()

    # Re-evaluation reloads base + adapter and reproduces the same generations.
    code, out = run_cli(capsys, "evaluate-qa", "--run", run, "--split", "test", "--greedy")
    assert code == 0, out
    again = [json.loads(line) for line in (run / "eval-greedy" / "predictions_test.jsonl").open()]
    first = [json.loads(line) for line in (run / "predictions_test.jsonl").open()]
    assert again == first

    # A classification student on augmented data: the table reads mode and teacher from augment's manifest.
    augmented = tmp_path / "augmented"
    rewrite = QAItem(
        "r1",
        "is the drug a binding drug ?",
        "the drug affinity is a score",
        "yes",
        source="rewrite",
        parent_id="train-a",
    )
    write_qa_dir(augmented, extra_train=[rewrite])
    (augmented / "manifest.json").write_text(
        json.dumps(
            {"mode": "rewrite", "model": "teacher-7b", "data": {"split": {"split": "official", "fold": 0}}}
        )
    )
    cls_run = tmp_path / "seqcls"
    code, out = run_cli(
        capsys,
        "finetune",
        "--method",
        "seqcls-lora",
        "--model",
        setup["bert"],
        "--data",
        augmented,
        "--out",
        cls_run,
        *TRAIN,
    )
    assert code == 0, out

    code, out = run_cli(
        capsys,
        "finetune",
        "--method",
        "tag",
        "--model",
        setup["bert"],
        "--data",
        setup["qa"],
        "--out",
        tmp_path / "tag",
        "--tag-length",
        "4",
        *TRAIN,
    )
    assert code == 0, out
    assert (tmp_path / "tag" / "tags" / "tags.json").is_file()

    code, out = run_cli(capsys, "compare", "--runs", str(tmp_path / "*"), "--out", tmp_path / "table")
    assert code == 0, out
    rows = json.loads((tmp_path / "table" / "compare.json").read_text())["rows"]
    ours = {r["method"]: r for r in rows if r["kind"] == "ours"}
    assert ours.keys() == {"lora", "seqcls-lora", "tag"}
    assert (ours["lora"]["augmentation"], ours["lora"]["teacher"], ours["lora"]["data"]) == (
        "none",
        None,
        "qa",
    )
    assert (ours["seqcls-lora"]["augmentation"], ours["seqcls-lora"]["teacher"]) == ("rewrite", "teacher-7b")
    assert ours["seqcls-lora"]["data"] == "official test"
    assert ours["lora"]["accuracy"] == metrics["splits"]["test"]["accuracy"]
    baselines = {r["data"]: r["accuracy"] for r in rows if r["kind"] == "baseline"}
    assert baselines == {"qa": pytest.approx(1 / 3), "official test": pytest.approx(1 / 3)}
    gpt4 = next(r for r in rows if r["student"] == "GPT-4 5-shot")
    assert gpt4["accuracy"] == 0.744 and gpt4["data"] == "official test"
    table = (tmp_path / "table" / "compare.md").read_text()
    assert "| ours | bert | seqcls-lora | rewrite | teacher-7b | official test | - |" in table
    assert "| published | GPT-4 5-shot | - | - | - | official test | - | 0.744 |" in table


def test_resume_finishes_an_interrupted_run(setup, tmp_path, capsys):
    run = tmp_path / "run"
    config = student_config(setup["llama"], data=setup["qa"], epochs=2, lr=1e-2, batch_size=1, save_every=1)
    with pytest.raises(TrainingInterrupted):
        finetune(config, run, stop_after_steps=2)
    code, out = run_cli(capsys, "finetune", "--out", run, "--model", setup["llama"], "--data", setup["qa"])
    assert code == 2 and "unfinished run" in out and "--resume" in out
    code, out = run_cli(capsys, "finetune", "--out", run, "--resume", "--greedy")
    assert code == 0, out
    assert json.loads((run / "metrics.json").read_text())["training"]["steps"] == 6
    assert "resumed at epoch 0, step 2" in (run / "train.log").read_text()


def test_bad_input_is_a_clear_error(setup, tmp_path, capsys):
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
        code, out = run_cli(capsys, "finetune", *args, *common)
        assert code == 2 and message in out, (args, out)
    code, out = run_cli(capsys, "evaluate-qa", "--run", tmp_path / "nothing")
    assert code == 2 and "not a student run directory" in out
    code, out = run_cli(capsys, "compare", "--runs", tmp_path / "nothing", "--out", tmp_path / "t")
    assert code == 2 and "no such run directory" in out
