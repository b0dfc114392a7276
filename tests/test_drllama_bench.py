"""benchmarks/drllama.py end to end on tiny models: export, a served teacher, augmentation, a student per
mode, `domainlm compare`, and a rerun that keeps every finished step."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "drllama.py"


@pytest.mark.slow
def test_the_drllama_bench_runs_and_resumes(model_dir, data_dir, tmp_path):
    model = str(model_dir("llama"))
    command = [sys.executable, str(BENCH), "--data", str(data_dir), "--teacher", model, "--student", model]
    command += ["--methods", "seqcls-lora", "--modes", "none,rewrite", "--limit", "3", "--epochs", "1"]
    command += ["--max-length", "48", "--max-tokens", "8", "--threads", "1", "--concurrency", "3"]
    command += ["--prompt-style", "fewshot"]
    command += ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    first = subprocess.run(command, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "drllama.json").read_text())
    counts = result["augmentation"]["rewrite"]["counts"]
    assert counts["requests_planned"] == 3 and counts["train_originals"] == 450
    # a tiny random teacher writes nothing the filters keep: rewrite's training set is none's, trained once
    settings = f"-{Path(model).name}-e1-len48"  # the student settings that are not the defaults
    none_run = f"seqcls-lora-none-s0{settings}"
    assert counts["generated"] == {} and set(result["student_seconds"]) == {none_run}
    rewrite_run = f"seqcls-lora-rewrite-{Path(model).name}-fewshot-s0{settings}"  # teacher, prompts name it
    assert result["same_training_data"] == {rewrite_run: none_run}
    assert (tmp_path / "out" / "compare" / "compare.md").is_file()
    md = (tmp_path / "out" / "drllama.md").read_text()
    assert "| rewrite | " in md and "domainlm finetune --method seqcls-lora" in md
    assert "| 0 | 0 / 0 / 0 | 450 |" in md  # nothing kept, so no label of it either
    assert f"{rewrite_run}: its training set equals {none_run}'s" in md and "(fewshot prompts)" in md

    again = subprocess.run(command, capture_output=True, text=True, env=env)  # everything is kept
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((tmp_path / "out" / "drllama.json").read_text())
    assert rerun["student_seconds"] == {none_run: 0.0}
    # the teacher came back on another port; its replies are still the cache's (refused requests are not)
    answered = counts["requests_sent"] - counts["failed_requests"]
    assert rerun["augmentation"]["rewrite"]["counts"]["replies_from_cache"] == answered > 0


def test_kept_labels_add_up_the_generated_modes_only(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))  # the bench imports its sibling serve_throughput
    spec = importlib.util.spec_from_file_location("drllama_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    labels = {
        "original": {"yes": 248, "no": 152, "maybe": 50},
        "rewrite": {"yes": 93, "no": 35, "maybe": 17},
        "new": {"yes": 58, "no": 160, "maybe": 23},
    }
    assert bench.kept_labels({"labels": labels}) == "151 / 195 / 40"
    assert bench.kept_labels({"generated": {}}) == "-"  # a manifest from before labels were counted


def test_run_folders_name_their_student_settings_and_refuse_another_settings_run(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("drllama_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    defaults = {"epochs": 2, "lr": 1e-3, "max_length": 256, "batch_size": 8, "grad_accum": 2}
    args = SimpleNamespace(student="smollm2-135m", keep_context="start", class_weight="none", **defaults)
    assert bench.student_suffix(args, "prefix") == ""  # the first runs' settings: their folder names are kept
    args.lr, args.keep_context, args.class_weight = 1e-2, "end", "balanced"
    assert bench.student_suffix(args, "seqcls-lora") == "-lr0.01-keepend-cwbalanced"
    assert bench.student_suffix(args, "prefix") == "-lr0.01-keepend"  # class weights: classifiers only
    run = tmp_path / "prefix-none-s0-lr0.01-keepend"
    run.mkdir()
    bench.check_kept_run(run, args, "prefix", 0)  # no config yet: a fresh run
    made = {"method": "prefix", "model": "smollm2-135m", "seed": 0, "keep_context": "end", **defaults}
    # no class_weight recorded: a run from before the setting, made at its default
    (run / "config.yaml").write_text(yaml.safe_dump(made))
    with pytest.raises(SystemExit, match=r"other settings: lr 0.001 \(asked 0.01\)"):
        bench.check_kept_run(run, args, "prefix", 0)
    args.lr = 1e-3
    bench.check_kept_run(run, args, "prefix", 0)
