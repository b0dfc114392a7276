"""Dr. LLaMA end to end on local models (issue 13): `domainlm serve` runs the teacher, `domainlm augment`
writes rewrite / new / combined training data for the official split's fold-0 training items (its filters
count what they drop), students fine-tune on no augmentation and on each mode and answer the official test
set (500 items), and `domainlm compare` puts them beside the majority class and the published rows.

    python benchmarks/drllama.py --data ../shared/data --teacher smollm2-135m --student smollm2-135m \\
        --methods seqcls-lora,lora --out benchmarks/results/smollm2-135m/drllama

Every step is a `domainlm` command a user would type; they are printed as they run and recorded in the
results. Reruns resume: teacher replies are cached (one cache for all modes, so `combined` asks nothing
new), finished student runs are kept and unfinished ones continue from their checkpoints. Writes
drllama.json, drllama.md and compare/ (table and plot) under --out; data and runs go to --work.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

from domainlm import io
from domainlm.qa.data import load_qa_dir
from domainlm.qa.students.config import CLASS_WEIGHTS
from domainlm.qa.students.prompt_fit import KEEP
from serve_throughput import server_process

HERE = Path(__file__).parent
MODES = ("none", "rewrite", "new", "combined")
GENERATIVE = {"lora", "prefix"}


def domainlm(*args: str) -> list[str]:
    return [sys.executable, "-m", "domainlm", *map(str, args)]


def shown_path(arg: str) -> str:
    """A path under the working directory as the relative path a user would type."""
    cwd = f"{Path.cwd()}{os.sep}"
    return arg[len(cwd) :] if arg.startswith(cwd) else arg


def run(command: list[str], commands: list[str], env: dict, check: bool = True) -> int:
    shown = "domainlm " + shlex.join(shown_path(str(a)) for a in command[3:])
    print(f"$ {shown}", flush=True)
    commands.append(shown)
    return subprocess.run(command, check=check, env=env).returncode


def augment(args, pqa: Path, modes: list[str], commands: list[str], env: dict) -> dict[str, dict]:
    """Each mode's manifest (counts, drops by reason, token usage); the teacher serves them all."""
    wanted = [m for m in modes if m != "none"]
    if not wanted:
        return {}
    served = SimpleNamespace(
        model=args.teacher,
        batch_window_ms=20.0,
        max_batch_size=16,
        concurrency=[args.concurrency],
        device=None,
    )
    name = Path(args.teacher).name
    manifests = {}
    with server_process(served, env, model_name=name, log=args.work / "teacher.log") as url:
        for mode in wanted:
            out = args.work / f"aug-{mode}{variant(args)}"
            command = domainlm(
                "augment", "--mode", mode, "--teacher", url, "--model", name, "--data", pqa, "--out", out,
                "--cache", args.work / f"replies{variant(args)}.sqlite", "--concurrency", args.concurrency,
                "--max-tokens", args.max_tokens, "--timeout", args.timeout, "--no-progress",
                "--prompt-style", args.prompt_style,
            )  # fmt: skip
            if args.limit:
                command += ["--limit", str(args.limit)]
            started = time.time()
            code = run(command, commands, env, check=False)
            path = out / "manifest.json"
            manifest = json.loads(path.read_text()) if path.is_file() else None
            # requests the teacher refused (e.g. a prompt beyond its context) are counted drops, not a stop
            if code and not (
                manifest and path.stat().st_mtime >= started and manifest["counts"]["failed_requests"]
            ):
                raise SystemExit(f"domainlm augment --mode {mode} failed (exit status {code})")
            manifests[mode] = {
                "counts": manifest["counts"],
                "rejects_by_reason": manifest["rejects_by_reason"],
                "usage": manifest["usage"],  # every reply used, this run's or the cache's
                "usage_this_run": manifest["usage_this_run"],
                "seconds": round(time.time() - started, 1),
            }
    return manifests


def variant(args) -> str:
    """What tells this teacher setting's folders apart; none for the first setting run (the 135M instruction
    model with chat prompts), whose folders predate the option."""
    parts = [] if args.teacher == "smollm2-135m" else [Path(args.teacher).name]
    parts += [] if args.prompt_style == "chat" else [args.prompt_style]
    return "".join(f"-{p}" for p in parts)


def students(args, pqa: Path, modes: list[str], commands: list[str], env: dict) -> tuple[dict, dict]:
    """Train and score every (method, mode, seed): (each run's wall seconds, 0 for a kept run; the runs not
    trained because their mode's training data equals an earlier mode's, e.g. when the teacher's replies
    were all filtered out -> the run that stands for them)."""
    seconds, same = {}, {}
    folders = {mode: pqa if mode == "none" else args.work / f"aug-{mode}{variant(args)}" for mode in modes}
    fingerprints = {mode: training_data(folder) for mode, folder in folders.items()}
    for method in args.methods:
        settings = student_suffix(args, method)
        for seed in args.seeds:
            trained_on: dict[str, str] = {}  # training data fingerprint -> the run trained on it
            for mode in modes:
                teacher = "" if mode == "none" else variant(args)  # no teacher: runs shared by every setting
                run_dir = args.work / "runs" / f"{method}-{mode}{teacher}-s{seed}{settings}"
                data, fingerprint = folders[mode], fingerprints[mode]
                if fingerprint in trained_on:
                    same[run_dir.name] = trained_on[fingerprint]
                    print(
                        f"{run_dir.name}: the same training data as {same[run_dir.name]}; not trained again"
                    )
                    continue
                trained_on[fingerprint] = run_dir.name
                check_kept_run(run_dir, args, method, seed)
                if (run_dir / "metrics.json").is_file():
                    seconds[run_dir.name] = 0.0
                    continue
                command = domainlm(
                    "finetune", "--method", method, "--model", args.student, "--data", data, "--out", run_dir,
                    "--epochs", args.epochs, "--lr", args.lr, "--max-length", args.max_length,
                    "--batch-size", args.batch_size, "--grad-accum", args.grad_accum, "--seed", seed,
                    "--save-every", 20, "--eval-batch-size", 8, "--keep-context", args.keep_context,
                )  # fmt: skip
                if method in GENERATIVE:
                    command += ["--answer-scoring", "likelihood", "--no-long-answer", "--greedy"]
                else:
                    command += ["--class-weight", args.class_weight]
                if (run_dir / "config.yaml").is_file():
                    command += ["--resume"]
                started = time.time()
                run(command, commands, env)
                seconds[run_dir.name] = round(time.time() - started, 1)
    return seconds, same


# A run folder's name carries each student setting that differs from these, the first runs' settings (their
# folders predate the suffix), so a finished run made with other settings is never kept for these.
STUDENT_DEFAULTS = {
    "student": ("", "smollm2-135m"),
    "epochs": ("e", 2),
    "lr": ("lr", 1e-3),
    "max_length": ("len", 256),
    "batch_size": ("b", 8),
    "grad_accum": ("acc", 2),
    "keep_context": ("keep", KEEP[0]),
    "class_weight": ("cw", CLASS_WEIGHTS[0]),  # classifier students only
}


def student_settings(args, method: str) -> dict:
    """The settings a `method` student run is made with (class weights: classifier students only)."""
    settings = {key: getattr(args, key) for key in STUDENT_DEFAULTS}
    if method in GENERATIVE:
        settings["class_weight"] = "none"
    return settings


def student_suffix(args, method: str) -> str:
    """`-lr0.01-keepend` for a run at lr 1e-2 keeping the context's end; "" at the defaults."""
    parts = []
    for key, value in student_settings(args, method).items():
        short, default = STUDENT_DEFAULTS[key]
        if value != default:
            if key == "student":
                value = Path(value).name
            parts.append(f"-{short}{value:g}" if isinstance(value, float) else f"-{short}{value}")
    return "".join(parts)


def check_kept_run(run_dir: Path, args, method: str, seed: int) -> None:
    """A run folder made by other settings (a folder renamed by hand, or made before a setting was named)
    stops the bench rather than being kept or resumed as if it were this setting's."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return
    made = yaml.safe_load(config.read_text()) or {}
    wanted = {"method": method, "model": args.student, "seed": seed}
    wanted |= {key: v for key, v in student_settings(args, method).items() if key != "student"}
    # a setting older runs do not record was at its default
    made = {key: made.get(key, STUDENT_DEFAULTS.get(key, (None, None))[1]) for key in wanted}
    differ = [f"{key} {made[key]!r} (asked {v!r})" for key, v in wanted.items() if made[key] != v]
    if differ:
        raise SystemExit(f"{run_dir} was made with other settings: {', '.join(differ)}; move it away, rerun")


def training_data(folder: Path) -> str:
    """A fingerprint of a QA folder's train and dev items (what a student learns and is selected on)."""
    splits = load_qa_dir(folder)
    items = [dataclasses.asdict(item) for item in [*splits.train, *splits.dev]]
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode("utf-8")).hexdigest()


def kept_labels(counts: dict) -> str:
    """The generated items' labels, every mode together (originals: yes 248 / no 152 / maybe 50 on fold 0)."""
    if "labels" not in counts:
        return "-"  # a manifest from before labels were counted
    generated = [by_label for mode, by_label in counts["labels"].items() if mode != "original"]
    return " / ".join(str(sum(c[label] for c in generated)) for label in counts["labels"]["original"])


def markdown(result: dict) -> str:
    style = result["settings"].get("prompt_style", "chat")
    lines = [
        f"# Dr. LLaMA on local models: teacher {result['teacher']} ({style} prompts), "
        f"student {result['student']}",
        "",
        f"PubMedQA official split, fold 0 as dev; test = the official 500. {result['machine']}.",
        "",
        "## Augmentation (teacher replies through the filters)",
        "",
        "Requests and seconds are this run's (a rerun takes its replies from the cache); completion tokens "
        "are those of every reply used.",
        "",
        "| mode | requests | generated kept | kept yes / no / maybe | train total | rejects by reason | "
        "completion tokens | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, m in result["augmentation"].items():
        c = m["counts"]
        kept = sum(c["generated"].values())
        labels = kept_labels(c)
        rejects = ", ".join(f"{k} {v}" for k, v in m["rejects_by_reason"].items() if v) or "none"
        lines.append(
            f"| {mode} | {c['requests_sent']} | {kept} | {labels} | {c['train_total']} | {rejects} | "
            f"{m.get('usage', m['usage_this_run'])['completion_tokens']:,} | {m['seconds']} |"
        )
    lines += ["", "## Students", "", result["compare_md"].split("\n", 2)[-1].strip(), ""]
    lines += [
        f"{run}: its training set equals {other}'s (no other teacher item kept), so {other} stands for it."
        for run, other in result["same_training_data"].items()
    ]
    lines += ["", "## Commands", ""]
    lines += [f"    {c}" for c in result["commands"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the shared data directory (holds pubmedqa/)")
    ap.add_argument("--teacher", default="smollm2-135m", help="model `domainlm serve` loads")
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--methods", default="seqcls-lora", help="comma-separated student methods")
    ap.add_argument("--modes", default=",".join(MODES), help="augmentation modes (none: the originals)")
    ap.add_argument("--seeds", default="0", help="comma-separated student seeds")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=256, help="student tokens per item (context cut)")
    ap.add_argument("--keep-context", choices=KEEP, default=KEEP[0], help="context part kept")
    ap.add_argument(
        "--class-weight",
        choices=CLASS_WEIGHTS,
        default=CLASS_WEIGHTS[0],
        help="classifier students: weigh each answer by its rarity in the loss",
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=16, help="teacher requests in flight")
    ap.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds a teacher request may take: a CPU teacher's full batch takes minutes, and a request "
        "that times out is retried while the server still works on it",
    )
    ap.add_argument("--max-tokens", type=int, default=256, help="most tokens per teacher reply")
    ap.add_argument(
        "--prompt-style",
        choices=("chat", "fewshot"),
        default="chat",
        help="teacher prompts: chat (JSON replies) or fewshot (completions, for base models)",
    )
    ap.add_argument("--limit", type=int, default=None, help="augment only the first N training items")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of every step")
    ap.add_argument("--work", type=Path, default=HERE / "cache" / "drllama")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    commands: list[str] = []
    pqa = args.work / "pqa"
    run(domainlm("data", "export", "pubmedqa", "--fold", 0, "--data", args.data, "--out", pqa), commands, env)
    started = time.time()
    manifests = augment(args, pqa, modes, commands, env)
    seconds, same = students(args, pqa, modes, commands, env)
    compare = args.out / "compare"
    runs = [args.work / "runs" / name for name in seconds]
    listed = [arg for path in runs for arg in ("--runs", path)]
    run(domainlm("compare", *listed, "--out", compare), commands, env)
    result = {
        "teacher": args.teacher,
        "student": args.student,
        "machine": f"{os.cpu_count()} CPU cores, OMP threads {args.threads or 'default'}",
        "settings": {k: v if not isinstance(v, Path) else str(v) for k, v in vars(args).items()},
        "augmentation": manifests,
        "student_seconds": seconds,
        "same_training_data": same,
        "seconds": round(time.time() - started, 1),
        "compare": json.loads((compare / "compare.json").read_text()),
        "compare_md": (compare / "compare.md").read_text(),
        "commands": [f"python benchmarks/drllama.py {shlex.join(sys.argv[1:])}", *commands],
    }
    io.write_json(args.out / "drllama.json", {k: v for k, v in result.items() if k != "compare_md"})
    io.write_text(args.out / "drllama.md", markdown(result))
    print(f"wrote {args.out}/drllama.md", flush=True)


if __name__ == "__main__":
    main()
