"""Tag-LLM commands: train (all three stages), eval, predict, demo, and tag-library inspection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from domainlm.cli import app
from domainlm.cli.options import (
    OVERFLOW_HELP,
    CacheBudgetOpt,
    CacheDtypeOpt,
    IsolateOpt,
    MaxSpanOpt,
    ReuseOpt,
    SpanStoreOpt,
    load_config_file,
    merge,
    parse_key_values,
    parse_prefer,
    parse_texts,
)
from domainlm.errors import DomainLMError

console = Console()

Opt = typer.Option
# What `train` uses when neither a flag nor --config gives an option: TrainConfig's defaults, restated so help
# can show them without importing torch (tests/test_cli_help.py checks they agree). The flags themselves
# default to None, so that a config file can set them.
TRAIN_DEFAULTS = {
    "epochs": 2.0,
    "lr": 1e-4,
    "batch_size": 4,
    "grad_accum": 8,
    "tag_length": 10,
    "overflow": "error",
    "seed": 0,
    "checkpoint_every": 50,
    "dtype": "float32",
    "head_init": "zero",
    "readout": "last",
    "head_hidden": 0,
    "head_anchors": 0,
    "mixed_precision": "auto",
}


def shown(help_text: str, name: str) -> str:
    """Help ending in the option's default, as the other commands' help shows theirs."""
    return f"{help_text} (default: {TRAIN_DEFAULTS[name]})"


# Keys of `train`'s config file that no flag sets.
FILE_ONLY_OPTIONS = ("eval_batch_size", "warmup_ratio", "weight_decay", "val_fraction")


@app.command()
def train(
    stage: Annotated[
        str,
        Opt(
            help="domain (stage 1: domain tags, next-token loss, causal LMs) or function "
            "(stages 2/3: function tag + head; stage 3 = a template with several domains)"
        ),
    ] = None,
    model: Annotated[
        str, Opt(help="Hugging Face hub id, local model directory, or 'minilm' (packaged)")
    ] = None,
    task: Annotated[str, Opt(help="built-in preset: qed, descriptor, dta, synergy, translation")] = None,
    data: Annotated[
        Path, Opt(help="user task: a CSV or JSONL file with the template's columns and a label")
    ] = None,
    data_dir: Annotated[
        Path,
        Opt(envvar="DOMAINLM_DATA", help="directory holding the preset data sets (default $DOMAINLM_DATA)"),
    ] = None,
    template: Annotated[
        str, Opt(help="template with {column} fields and <Tag> markers; the last marker is the function tag")
    ] = None,
    label_column: Annotated[str, Opt(help="user task: the column holding the label")] = None,
    head: Annotated[str, Opt(help="user task: regression or classification")] = None,
    n_classes: Annotated[int, Opt(help="classification: number of classes (default: as found)")] = None,
    id_column: Annotated[str, Opt(help="user task: a column of row ids")] = None,
    split_column: Annotated[str, Opt(help="user task: a column holding train/val/test")] = None,
    char_level: Annotated[
        list[str], Opt(help="domain tag whose data is tokenised one character a token (repeatable)")
    ] = None,
    corpus: Annotated[
        Path,
        Opt(
            help="stage 1: unlabelled text (one item a line, a JSON object id->text, "
            "or CSV/JSONL with --text-column)"
        ),
    ] = None,
    tag: Annotated[str, Opt(help="stage 1: the domain tag to train, e.g. SMILES")] = None,
    text_column: Annotated[str, Opt(help="stage 1: column of a CSV/JSONL corpus")] = None,
    language: Annotated[
        str,
        Opt(
            help="stage 1: with a folder of Tatoeba pairs as --corpus, the language whose side to read "
            "(FR or fra; each sentence once); --tag defaults to its tag (FR)"
        ),
    ] = None,
    tags: Annotated[list[str], Opt(help="tag library to start from (repeatable; they merge)")] = None,
    prefer: Annotated[list[str], Opt(help="TAG=LIBRARY_DIR: which library wins when two disagree")] = None,
    out: Annotated[Path, Opt(help="run directory to write")] = None,
    task_option: Annotated[
        list[str],
        Opt(
            help="preset loader option key=value (repeatable), e.g. fold=2; dta: dataset=davis|kiba|PATH "
            "(a DeepDTA-layout folder), affinity=pkd|none (Kd in nM read as pKd, or values used as they are)"
        ),
    ] = None,
    limit_train: Annotated[int, Opt(help="use only the first N training rows (quick runs)")] = None,
    limit_eval: Annotated[int, Opt(help="use only the first N validation and test rows")] = None,
    skip_invalid: Annotated[
        bool, Opt("--skip-invalid", help="skip invalid rows, counted, instead of stopping")
    ] = None,
    epochs: Annotated[float, Opt(help=shown("epochs (fractions allowed)", "epochs"))] = None,
    lr: Annotated[float, Opt(help=shown("AdamW learning rate", "lr"))] = None,
    batch_size: Annotated[int, Opt(help=shown("batch size", "batch_size"))] = None,
    grad_accum: Annotated[int, Opt(help=shown("gradient accumulation steps", "grad_accum"))] = None,
    tag_length: Annotated[int, Opt(help=shown("vectors per new tag (p)", "tag_length"))] = None,
    tag_init_text: Annotated[
        list[str],
        Opt(
            help="NAME=TEXT: a new tag starts as the embeddings of TEXT's tokens (e.g. FR=French), not the "
            "paper's mean embedding; repeatable"
        ),
    ] = None,
    head_init: Annotated[
        str,
        Opt(
            help=shown(
                "how a new head starts: zero (the paper), standardized (input centred and scaled by the "
                "untrained tags' training read-outs) or probe (also fitted to them in closed form)",
                "head_init",
            )
        ),
    ] = None,
    readout: Annotated[
        str, Opt(help=shown("head input: the function tag's last vector, or the mean of its p", "readout"))
    ] = None,
    head_hidden: Annotated[
        int, Opt(help=shown("0: a linear head; N: an MLP with N hidden units", "head_hidden"))
    ] = None,
    head_lr: Annotated[
        float,
        Opt(
            help="the heads' learning rate (default: --lr); with --head-init probe, a lower one or 0 (the "
            "fitted head stays) lets the tags adapt to the fitted head"
        ),
    ] = None,
    head_anchors: Annotated[
        int,
        Opt(
            help=shown(
                "N > 0: the head's centre follows the mean read-out of N fixed training inputs while the "
                "tags train, so a step that shifts every read-out alike moves no prediction",
                "head_anchors",
            )
        ),
    ] = None,
    isolate: IsolateOpt = None,
    reuse: ReuseOpt = None,
    cache_budget_gb: CacheBudgetOpt = None,
    cache_dtype: CacheDtypeOpt = None,
    span_store: SpanStoreOpt = None,
    overflow: Annotated[str, Opt(help=shown(OVERFLOW_HELP, "overflow"))] = None,
    max_span_tokens: MaxSpanOpt = None,
    enrich: Annotated[
        bool, Opt("--enrich", help="also train domain tags with the LM loss (paper ablation)")
    ] = None,
    train_domain_tags: Annotated[
        bool, Opt("--train-domain-tags", help="train domain tags jointly with the task loss (for encoders)")
    ] = None,
    seed: Annotated[int, Opt(help=shown("random seed", "seed"))] = None,
    checkpoint_every: Annotated[
        int,
        Opt(
            help=shown(
                "write checkpoint.pt every N optimizer steps (0: never between); always also at each epoch's "
                "end and on Ctrl-C / SIGTERM, for --resume",
                "checkpoint_every",
            ),
        ),
    ] = None,
    dtype: Annotated[str, Opt(help=shown("float32 | bfloat16 | float16", "dtype"))] = None,
    device: Annotated[
        str, Opt(help="cpu, cuda, cuda:1, ... (default: model's; under accelerate launch, each process's)")
    ] = None,
    mixed_precision: Annotated[
        str,
        Opt(
            help=shown(
                "auto (bf16 on a GPU that has it, else fp16; none on the CPU) | no | bf16 | fp16",
                "mixed_precision",
            )
        ),
    ] = None,
    config: Annotated[Path, Opt(help="YAML file with any of these options; flags override it")] = None,
    resume: Annotated[
        bool,
        Opt(
            "--resume",
            help="continue an interrupted run from its checkpoint, with the configuration it saved",
        ),
    ] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="replace an existing run directory")] = False,
):
    """Train tags: domain tags from unlabelled text, or a function tag (+ head) on a labelled task."""
    flags = {k: v for k, v in locals().items() if k not in {"config", "resume", "overwrite", "task_option"}}
    flags["task_options"] = parse_key_values(task_option, "--task-option") or None
    flags["tag_init_text"] = parse_texts(tag_init_text, "--tag-init-text") or None
    opts = merge([*flags, *FILE_ONLY_OPTIONS], load_config_file(config), flags)
    if not opts.get("out"):
        raise DomainLMError("--out is required: the run directory to write")
    opts["prefer"] = parse_prefer(opts.get("prefer"))
    from domainlm.runs import RunConfig
    from domainlm.tagtrain import train_run

    result = train_run(RunConfig.from_options(opts), opts["out"], resume=resume, overwrite=overwrite)
    print_metrics(result, title=f"{result.get('task', 'run')} -> {opts['out']}")


@app.command("eval")
def evaluate(
    run: Annotated[Path, Opt(help="a run directory written by `domainlm train`")],
    split: Annotated[str, Opt(help="val or test")] = "test",
    data_dir: Annotated[Path, Opt(envvar="DOMAINLM_DATA", help="preset data directory")] = None,
    data: Annotated[Path, Opt(help="another labelled file to score (user tasks)")] = None,
    device: Annotated[str, Opt(help="device")] = None,
):
    """Score a trained run on a split (or another labelled file) and write eval_<split>.json beside it."""
    from domainlm.tageval import evaluate_run

    print_metrics(
        evaluate_run(run, split=split, data_dir=data_dir, data=data, device=device), title=f"{run} {split}"
    )


@app.command()
def predict(
    input: Annotated[Path, Opt(help="CSV or JSONL with the template's columns")],
    out: Annotated[Path, Opt(help="CSV to write: the input columns plus predictions")],
    run: Annotated[Path, Opt(help="a run directory (gives model, tags and template)")] = None,
    tags: Annotated[list[str], Opt(help="tag libraries (instead of --run)")] = None,
    model: Annotated[str, Opt(help="base model (instead of --run)")] = None,
    template: Annotated[str, Opt(help="template (instead of --run)")] = None,
    skip_invalid: Annotated[
        bool,
        Opt(
            "--skip-invalid",
            help="write invalid rows with an empty prediction and a reason column, counted, instead of "
            "stopping",
        ),
    ] = False,
    batch_size: Annotated[int, Opt(help="batch size")] = 32,
    device: Annotated[str, Opt(help="device")] = None,
):
    """Batch prediction from a file to CSV with trained tags."""
    options = dict(locals())  # predict_file's arguments, by the same names
    from domainlm.tagpredict import predict_file

    summary = predict_file(**options)
    console.print(
        f"wrote {summary['n_predicted']} predictions to {out}"
        + (f" ({summary['n_skipped']} rows skipped)" if summary["n_skipped"] else "")
    )


@app.command()
def translate(
    input: Annotated[Path, Opt(help="text file, one sentence a line (empty lines stay empty, counted)")],
    out: Annotated[Path, Opt(help="text file to write: one translation a line")],
    src: Annotated[str, Opt(help="source language tag, e.g. FR")],
    tgt: Annotated[str, Opt(help="target language tag, e.g. EN")],
    run: Annotated[Path, Opt(help="a translation run directory (gives model, tags and template)")] = None,
    tags: Annotated[list[str], Opt(help="tag libraries (instead of, or added to, --run's)")] = None,
    model: Annotated[str, Opt(help="base model (instead of --run)")] = None,
    max_new_tokens: Annotated[int, Opt(help="tokens written at most per line")] = 128,
    num_beams: Annotated[int, Opt(help="beam search width (1: greedy)")] = 1,
    batch_size: Annotated[int, Opt(help="batch size")] = 16,
    device: Annotated[str, Opt(help="device")] = None,
):
    """Translate a file line by line with language tags and a generative <Translate> tag (stop at newline)."""
    options = dict(locals())  # translate_file's arguments, by the same names
    from domainlm.translate import translate_file

    summary = translate_file(**options)
    console.print(
        f"wrote {summary['n_translated']} translations to {out}"
        + (f" ({summary['n_empty']} empty lines left empty)" if summary["n_empty"] else "")
    )


@app.command()
def demo(
    data_dir: Annotated[
        Path, Opt("--data", "--data-dir", envvar="DOMAINLM_DATA", help="shared data directory")
    ],
    out: Annotated[Path, Opt(help="run directory")] = Path("runs/demo-qed"),
    limit_train: Annotated[int, Opt(help="training molecules")] = 1000,
    limit_eval: Annotated[int, Opt(help="validation and test molecules")] = 250,
    epochs: Annotated[float, Opt(help="epochs")] = 3.0,
):
    """The main job, offline: QED from SMILES with tags on the packaged MiniLM (minutes on a CPU)."""
    from domainlm.tagtrain import run_demo

    console.print(
        "[bold]domainlm demo[/]: QED prediction from SMILES, tags on the packaged all-MiniLM-L6-v2 "
        f"({limit_train} training molecules, {epochs:g} epochs; over-long ligands truncated, counted)"
    )
    result = run_demo(data_dir, out, limit_train=limit_train, limit_eval=limit_eval, epochs=epochs)
    print_metrics(result, title=f"QED test metrics -> {out}")


@app.command("tags")
def show_tags(library: Annotated[list[Path], typer.Argument(help="tag library directories")]):
    """Show what tag libraries hold: base model, tags, heads, training metrics."""
    from domainlm.engine.library import TagLibrary

    for path in library:
        lib = TagLibrary.load(path)
        title = f"{path} (base: {lib.base_model}, hidden {lib.hidden_size})"
        t = Table("tag", "kind", "length", "char level", "head", title=title)
        for s in lib.specs.values():
            head = (
                "" if s.head is None else s.head.type + (f"/{s.head.n_classes}" if s.head.n_classes else "")
            )
            t.add_row(s.name, s.kind, str(s.length), "yes" if s.char_level else "", head)
        console.print(t)
        if lib.metrics:
            console.print(json.dumps(lib.metrics, indent=1))


def print_metrics(result: dict, title: str) -> None:
    from domainlm import distributed

    if not distributed.is_main_process():  # several processes trained it: the main one reports
        return
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in result.items():
        if isinstance(v, float):
            t.add_row(k, f"{v:.4g}")
        elif isinstance(v, int) and not isinstance(v, bool):
            t.add_row(k, f"{v:,}")
    console.print(t)
