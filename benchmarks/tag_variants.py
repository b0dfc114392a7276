"""Tag variants on one frozen model and one split, chosen on validation only: what makes tags learn.

Every variant trains the function tag (and its head) through `train_tagged_task`, the code path of
`domainlm train` and the bench's tag row, on the same split as `domainlm bench` with the same
`--limit-train/--limit-eval`. The domain tag is frozen (untrained, or a stage-1 library with `--tags`), so
one span store serves every variant: each molecule's keys/values are computed once for the whole sweep.

Variants vary the learning rate and epochs, the read-out (the function tag's last vector or the mean over
its p vectors), the head (linear or an MLP), the head's start (the paper's zero head, a standardised input,
or a ridge fit on the untrained read-outs: linear probing, then tuning) and p. The paper's setting is the
`paper` row. Two overfit rows train on the first `--overfit` training molecules and report the fit on those
same molecules (their "val" column), to tell an optimiser that cannot fit from a model that cannot
generalise.

    python benchmarks/tag_variants.py --data ../shared/data --model smollm2-135m \
        --limit-train 2000 --limit-eval 500 --out benchmarks/results/smollm2-135m/tag_variants

Finished variants are kept (`runs/<name>/metrics.json`); a rerun does only the missing ones.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from domainlm import io
from domainlm.engine.model import TaggedModel
from domainlm.engine.reuse import SpanCache
from domainlm.tagruns import train_tagged_task
from domainlm.tasks.base import TaskData
from domainlm.tasks.resolve import TaskSource, resolve_task
from domainlm.training import TrainConfig

BASE = dict(batch_size=16, grad_accum=1, epochs=4, evals_per_epoch=2, eval_batch_size=64, overflow="truncate")
VARIANTS = {
    # the paper's setting as `domainlm train` runs it (bench defaults: lr 1e-4, 2 epochs, batch 4 x 8)
    "paper": dict(lr=1e-4, epochs=2, batch_size=4, grad_accum=8),
    "zero-lr1e-3": dict(lr=1e-3),
    "standardized-lr1e-3": dict(lr=1e-3, head_init="standardized"),
    "probe-lr1e-4": dict(lr=1e-4, head_init="probe"),
    "probe-lr1e-3": dict(lr=1e-3, head_init="probe"),
    "probe-lr3e-5": dict(lr=3e-5, head_init="probe"),
    # linear probing, then tuning the tag with the fitted head fixed (head_lr 0) or barely moving
    "probe-headlr0-lr1e-4": dict(lr=1e-4, head_lr=0.0, head_init="probe", epochs=2),
    "probe-headlr0-lr1e-3": dict(lr=1e-3, head_lr=0.0, head_init="probe", epochs=2),
    "probe-lr1e-5": dict(lr=1e-5, head_init="probe", epochs=2),
    # the probe's head divides each read-out dimension by its spread over the examples (~0.08, against values
    # ~1): a step that moves every read-out alike moves every prediction far, so this step is small
    "probe-headlr0-lr1e-5": dict(lr=1e-5, head_lr=0.0, head_init="probe"),
    # the centre follows the mean read-out of 16 fixed training inputs: shifts of every read-out cancel
    "probe-anchored-lr1e-3": dict(lr=1e-3, head_lr=0.0, head_init="probe", head_anchors=16),
    "probe-anchored-lr1e-4": dict(lr=1e-4, head_lr=0.0, head_init="probe", head_anchors=16),
    "probe-fixedhead-lr1e-3": dict(lr=1e-3, head_lr=0.0, head_init="probe"),  # the anchors' control
    "probe-mean-lr1e-3": dict(lr=1e-3, head_init="probe", readout="mean"),
    "probe-p20-lr1e-3": dict(lr=1e-3, head_init="probe", tag_length=20),
    "standardized-mlp256-lr1e-3": dict(lr=1e-3, head_init="standardized", head_hidden=256),
    "overfit-paper-head": dict(lr=1e-3, epochs=30, overfit=True),
    "overfit-standardized": dict(lr=1e-3, epochs=30, head_init="standardized", overfit=True),
    "overfit-standardized-lr1e-2": dict(lr=1e-2, epochs=30, head_init="standardized", overfit=True),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="qed")
    ap.add_argument("--limit-train", type=int, default=2000)
    ap.add_argument("--limit-eval", type=int, default=500)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--overfit", type=int, default=64, help="training molecules of the overfit rows")
    ap.add_argument("--tags", action="append", default=[], help="stage-1 tag library (domain tags, frozen)")
    ap.add_argument("--cache-dtype", choices=["bfloat16", "float16"], help="span keys/values in 16 bits")
    ap.add_argument(
        "--max-span-tokens", type=int, help="data spans cut (or windowed) at this many tokens, as the bench's"
    )
    ap.add_argument(
        "--overflow",
        choices=["truncate", "window"],
        default="truncate",
        help="longer spans: cut, or read whole in windows of --max-span-tokens (each behind its domain tag)",
    )
    ap.add_argument("--report-only", action="store_true", help="tabulate finished variants, train nothing")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    source = TaskSource(
        preset=args.task, data_dir=args.data, limit_train=args.limit_train, limit_eval=args.limit_eval
    )
    spec, data = resolve_task(source)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    if args.report_only:
        rows = {n: finished(out, n) for n in args.variants if finished(out, n)}
        return report(args, spec, data, rows, None, command)
    tm = TaggedModel.from_pretrained(args.model)
    if args.tags:
        tm.load_tags(*args.tags)
    cache = SpanCache(tm, dtype=getattr(torch, args.cache_dtype) if args.cache_dtype else None)
    small = data.train[: args.overfit]
    overfit_data = TaskData(small, small, data.test[:0])
    function_tag = spec.template.rsplit("<", 1)[1].rstrip(">").strip()
    rows = {}
    for name in args.variants:
        run_dir = out / "runs" / name
        if finished(out, name):
            rows[name] = finished(out, name)
            continue
        settings = {**BASE, **VARIANTS[name]}
        if args.max_span_tokens:
            settings["max_span_tokens"] = args.max_span_tokens
        settings["overflow"] = args.overflow
        overfit = settings.pop("overfit", False)
        if function_tag in tm.specs:
            tm.remove_tag(function_tag)
        started = time.perf_counter()
        result = train_tagged_task(
            spec,
            overfit_data if overfit else data,
            tm,
            run_dir,
            TrainConfig(**settings),
            overwrite=True,
            source=source,
            span_cache=cache,
        )
        result.pop("predictions", None)
        result["sweep_seconds"] = round(time.perf_counter() - started, 1)
        result["settings"] = {**settings, "overfit": overfit}
        result["command"] = command
        rows[name] = result
        print(f"{name}: val_mse={result.get('val_mse')} test_mse={result.get('test_mse')}", flush=True)
        report(args, spec, data, rows, cache, command)  # after each variant: a killed sweep keeps its rows
    return report(args, spec, data, rows, cache, command)


def finished(out: Path, name: str) -> dict | None:
    """A finished variant's row: its run's metrics and the settings its name stands for."""
    path = out / "runs" / name / "metrics.json"
    if not path.exists():
        return None
    row = json.loads(path.read_text())
    settings = {**BASE, **VARIANTS[name]}
    row["settings"] = {**settings, "overfit": settings.pop("overfit", False)}
    row.setdefault("sweep_seconds", row.get("seconds"))
    return row


def earlier_rows(out: Path, spec, data, model: str) -> dict:
    """Rows of earlier sweeps into this folder on the same task, model and split whose runs are gone (run
    folders are not kept in git): the table keeps every variant ever tried."""
    path = out / "tag_variants.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    same = (old["task"], old["model"], old["n_train"], old["n_val"], old["n_test"])
    if same != (spec.name, model, len(data.train), len(data.val), len(data.test)):
        return {}
    return {name: {"command": old["command"], **row} for name, row in old["rows"].items()}


def report(args, spec, data, rows: dict, cache, command: str) -> int:
    out = Path(args.out)
    rows = {**earlier_rows(out, spec, data, args.model), **rows}
    old = json.loads((out / "tag_variants.json").read_text()) if (out / "tag_variants.json").exists() else {}
    report = {
        "task": spec.name,
        "model": args.model,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "command": command,
        # a rerun that only tabulates finished variants computes no span: the sweep's own figures stay
        "span_cache": vars(cache.stats) if cache and cache.stats.misses else old.get("span_cache"),
        "rows": rows,
        "notes": old.get("notes", []),  # written by hand: runs stopped before the end, with what they showed
    }
    io.write_json(out / "tag_variants.json", report)
    io.write_text(out / "tag_variants.md", markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    rows = report["rows"]
    tuned = {k: r for k, r in rows.items() if not r["settings"]["overfit"] and "val_mse" in r}
    best = min(tuned, key=lambda k: tuned[k]["val_mse"]) if tuned else None
    lines = [
        f"# Tag variants: {report['task']} on {report['model']}",
        "",
        f"{report['n_train']} train / {report['n_val']} val / {report['n_test']} test (the bench's split). "
        "Selection on validation only: each run keeps its best validation step, and the variant with the "
        f"lowest val MSE (**{best}**) is the one to report. Overfit rows: trained on the first molecules of "
        "the training split, their val column is the fit on those same molecules.",
        "",
        "| variant | lr | head lr | epochs | head start | read-out | head | p | val MSE | test MSE "
        "| test Pearson | best step | trainable | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        s = r["settings"]
        head = f"MLP {s['head_hidden']}" if s.get("head_hidden") else "linear"
        cells = [
            f"**{name}**" if name == best else name,
            f"{s['lr']:g}",
            "lr" if s.get("head_lr") is None else f"{s['head_lr']:g}",
            f"{s['epochs']:g}",
            s.get("head_init", "zero") + (f", {s['head_anchors']} anchors" if s.get("head_anchors") else ""),
            s.get("readout", "last"),
            head,
            str(s.get("tag_length", 10)),
            _num(r.get("val_mse")),
            _num(r.get("test_mse")),
            _num(r.get("test_pearson"), 3),
            str(r.get("best_step")),
            f"{r['trainable_params']:,}",
            f"{r['sweep_seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if report["span_cache"] is None:
        lines += ["", "Tabulated from finished runs, which were trained by this command without"]
        lines += ["`--report-only` (in parallel processes, each given some of the `--variants`)."]
    else:
        lines += ["", f"Span store: {report['span_cache']}"]
    if report.get("notes"):
        lines += [
            "",
            "Unfinished runs (stopped early; validation MSE from their `train.log`):",
            "",
        ]
        lines += [f"* {note}" for note in report["notes"]]
    commands = dict.fromkeys(r.get("command", report["command"]) for r in rows.values())
    lines += ["", "Made by:", ""] + [f"* `{c}`" for c in commands] + [""]
    return "\n".join(lines)


def _num(x, digits: int = 5) -> str:
    return "" if x is None else f"{x:.{digits}g}"


if __name__ == "__main__":
    sys.exit(main())
