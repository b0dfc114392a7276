"""`domainlm bench`: tags against every baseline on the same split and seed, as a markdown + JSON table."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from domainlm.cli import app
from domainlm.cli.options import (
    CacheBudgetOpt,
    CacheDtypeOpt,
    IsolateOpt,
    MaxSpanOpt,
    OverflowOpt,
    ReuseOpt,
    SpanStoreOpt,
    parse_key_values,
)

Opt = typer.Option
METHODS_HELP = (
    "methods to run (repeatable or comma-separated; default all): mean, nearest_neighbour, random_forest, "
    "gradient_boosting, linear_probe, prompt_tuning, lora, tags"
)


@app.command()
def bench(
    task: Annotated[str, Opt(help="preset task: qed, descriptor, dta, synergy")],
    model: Annotated[
        str, Opt(help="backbone: hub id, local model directory, or 'minilm' (packaged)")
    ] = "minilm",
    data_dir: Annotated[
        Path,
        Opt("--data", "--data-dir", envvar="DOMAINLM_DATA", help="data directory (default $DOMAINLM_DATA)"),
    ] = None,
    out: Annotated[
        Path, Opt(help="folder for <task>.md, <task>.json and <task>/ (rows, plots, runs)")
    ] = Path("runs/bench"),
    methods: Annotated[list[str], Opt("--methods", "--method", help=METHODS_HELP)] = None,
    limit_train: Annotated[int, Opt(help="use only the first N training examples (after the split)")] = None,
    limit_eval: Annotated[int, Opt(help="use only the first N validation and N test examples")] = None,
    epochs: Annotated[
        float, Opt(help="epochs for every trained method (default: the task's, as the paper)")
    ] = None,
    seed: Annotated[int, Opt(help="random seed, shared by every method")] = 0,
    lr: Annotated[
        float,
        Opt(help="one learning rate for every trained method (default: tags 1e-4, prompt tuning/LoRA 1e-3)"),
    ] = None,
    batch_size: Annotated[int, Opt(help="batch size")] = 4,
    grad_accum: Annotated[int, Opt(help="gradient accumulation steps")] = 8,
    skip_invalid: Annotated[
        bool, Opt("--skip-invalid", help="skip invalid inputs, counted, instead of stopping")
    ] = False,
    task_option: Annotated[
        list[str],
        Opt(
            help="preset loader option key=value (repeatable), e.g. max_chars=none; dta: "
            "dataset=davis|kiba|PATH (a DeepDTA-layout folder), affinity=pkd|none (Kd in nM read as pKd, "
            "or values used as they are)"
        ),
    ] = None,
    refit_train_val: Annotated[
        bool,
        Opt(
            "--refit-train-val",
            help="classical methods: after selection on the validation split (e.g. LightGBM's number of "
            "rounds), fit again on train + val for the test row, as DeepDTA's setting 1 trains on all five "
            "training folds; val metrics stay the selection model's",
        ),
    ] = False,
    tags: Annotated[list[str], Opt(help="stage-1 tag library for the tag method (repeatable)")] = None,
    train_domain_tags: Annotated[
        bool,
        Opt(
            "--train-domain-tags/--freeze-domain-tags",
            help="tag method: train domain tags with the task (default: yes, unless --tags gives them)",
        ),
    ] = None,
    fold: Annotated[list[str], Opt(help="run only this fold (repeatable; multi-fold tasks)")] = None,
    tag_option: Annotated[
        list[str],
        Opt(
            help="tag method only: a training setting key=value over the shared ones (repeatable), e.g. "
            "lr=1e-3, epochs=4, batch_size=16, head_init=zero|standardized|probe, readout=last|mean, "
            "head_hidden=256, tag_length=20"
        ),
    ] = None,
    overflow: OverflowOpt = "error",
    max_span_tokens: MaxSpanOpt = None,
    isolate: IsolateOpt = None,
    reuse: ReuseOpt = None,
    cache_budget_gb: CacheBudgetOpt = None,
    cache_dtype: CacheDtypeOpt = None,
    span_store: SpanStoreOpt = None,
    dtype: Annotated[str, Opt(help="float32 | bfloat16 | float16")] = "float32",
    device: Annotated[str, Opt(help="cpu, cuda, ... (default: cpu)")] = None,
    threads: Annotated[
        int,
        Opt(help="torch CPU threads (default: torch's choice; 1 is faster when other jobs share the cores)"),
    ] = None,
    resume: Annotated[bool, Opt("--resume", help="keep finished rows and run only the missing ones")] = False,
    overwrite: Annotated[
        bool, Opt("--overwrite", help="discard earlier rows of this task and start again")
    ] = False,
):
    """Run every method on one task (same split, same seed) and write a table of test metrics,
    trainable parameters and wall time. Each finished method is saved at once and the trained ones
    checkpoint as they go, so after Ctrl-C (which stops the whole bench) --resume continues there."""
    from domainlm.bench import ALL_METHODS, BenchSettings, run_bench

    if threads:
        import torch

        torch.set_num_threads(threads)

    given = dict(locals())
    chosen = [m.strip() for item in methods or [] for m in item.split(",") if m.strip()]
    given.update(
        data_dir=str(data_dir) if data_dir else None,
        span_store=str(span_store) if span_store else None,
        methods=tuple(chosen) or ALL_METHODS,
        task_options=parse_key_values(task_option, "--task-option"),
        tags=list(tags or []),
        folds=list(fold) if fold else None,
        tag_options=parse_key_values(tag_option, "--tag-option") or None,
    )
    settings = BenchSettings(**{f.name: given[f.name] for f in dataclasses.fields(BenchSettings)})
    err = Console(stderr=True)
    rows = run_bench(
        settings,
        out,
        resume=resume,
        overwrite=overwrite,
        log=lambda m: err.print(m, markup=False),
        command=shlex.join(["domainlm", *sys.argv[1:]]),
    )
    print_table(rows, task, out)
    _print_anchors(rows, task)


def print_table(rows: list[dict], task: str, out: Path) -> None:
    metric_keys = [k for k in rows[0] if k.startswith("test_")] if rows else []
    table = Table(title=f"{task}: {out / (task + '.md')}")
    for column in ["method", "fold", *metric_keys, "trainable_params", "seconds"]:
        table.add_column(column, overflow="fold")
    for row in rows:
        cells = [row["method"], row["fold"]]
        cells += [f"{row[k]:.4g}" if isinstance(row.get(k), float) else "n/a" for k in metric_keys]
        params = row.get("trainable_params")
        cells += [f"{params:,}" if params is not None else "n/a", f"{row['seconds']:.0f}"]
        table.add_row(*cells)
    # A pipe or log gets the whole table rather than 80 columns; a narrow terminal wraps cells (fold).
    console = Console()
    (console if console.is_terminal else Console(width=1000)).print(table)


def _print_anchors(rows: list[dict], task: str) -> None:
    """The published anchors of the data set the rows were made on (the task's for rows that predate that)."""
    from domainlm.bench import anchor_text
    from domainlm.tasks import get_task

    first = rows[0] if rows else {}
    anchors = first.get("published_anchors", get_task(task).published_anchors)
    if not anchors and first.get("dataset"):
        Console().print(f"published: none for this data set ({first['dataset']})", markup=False)
    for name, metrics in anchors:
        Console().print(f"published: {anchor_text(name, metrics)}", markup=False)
