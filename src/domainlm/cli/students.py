"""`domainlm finetune`, `domainlm evaluate-qa` and `domainlm compare`: QA students (Dr. LLaMA)."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from domainlm.cli import app
from domainlm.errors import InputError
from domainlm.qa.students.config import Decoding, StudentConfig

out_console = Console()
# `finetune`'s options are StudentConfig's fields, with their help and defaults.
FIELDS = {f.name: f for f in fields(StudentConfig)}
DEFAULT = {name: f.default for name, f in FIELDS.items()}

NumBeams = Annotated[int, typer.Option(help="beam width for generative students (the paper: 5)")]
RepetitionPenalty = Annotated[float, typer.Option(help="repetition penalty when generating (the paper: 2.0)")]
Temperature = Annotated[
    float, typer.Option(help="sampling temperature (the paper: 0.8); acts only with --sample")
]
Sample = Annotated[
    bool, typer.Option("--sample", help="sample instead of deterministic (beam or greedy) search")
]
Greedy = Annotated[
    bool,
    typer.Option(
        "--greedy",
        help="greedy decoding without repetition penalty; overrides --num-beams and --repetition-penalty",
    ),
]


AnswerScoring = Annotated[
    str,
    typer.Option(
        help="generative students: parse (read the label from the generated text, the paper's way; "
        "failures fall back to maybe and are counted) or likelihood (after the generated rationale, the "
        "label whose answer sentence is most probable; never fails)"
    ),
]


def _opt(name: str, more: str = ""):
    return typer.Option(help=FIELDS[name].metadata["help"] + more)


def _decoding(
    greedy: bool,
    num_beams: int,
    repetition_penalty: float,
    temperature: float,
    sample: bool,
    answer_scoring: str = "parse",
):
    if greedy:
        return Decoding(num_beams=1, repetition_penalty=1.0, do_sample=False, answer_scoring=answer_scoring)
    return Decoding(
        num_beams=num_beams,
        repetition_penalty=repetition_penalty,
        temperature=temperature,
        do_sample=sample,
        answer_scoring=answer_scoring,
    )


@app.command("finetune")
def finetune_command(
    out: Annotated[Path, typer.Option("--out", help="run directory to create (or continue with --resume)")],
    method: Annotated[str, _opt("method")] = DEFAULT["method"],
    model: Annotated[str | None, _opt("model")] = None,
    data: Annotated[str | None, _opt("data", " (default: $DOMAINLM_DATA)")] = None,
    split: Annotated[str, _opt("split")] = DEFAULT["split"],
    fold: Annotated[int, _opt("fold")] = DEFAULT["fold"],
    epochs: Annotated[int, _opt("epochs")] = DEFAULT["epochs"],
    lr: Annotated[float, _opt("lr")] = DEFAULT["lr"],
    batch_size: Annotated[int, _opt("batch_size")] = DEFAULT["batch_size"],
    grad_accum: Annotated[int, _opt("grad_accum")] = DEFAULT["grad_accum"],
    warmup_ratio: Annotated[float, _opt("warmup_ratio")] = DEFAULT["warmup_ratio"],
    weight_decay: Annotated[float, _opt("weight_decay")] = DEFAULT["weight_decay"],
    max_grad_norm: Annotated[float, _opt("max_grad_norm")] = DEFAULT["max_grad_norm"],
    lora_rank: Annotated[int, _opt("lora_rank")] = DEFAULT["lora_rank"],
    lora_alpha: Annotated[float, _opt("lora_alpha")] = DEFAULT["lora_alpha"],
    lora_dropout: Annotated[float, _opt("lora_dropout")] = DEFAULT["lora_dropout"],
    target_modules: Annotated[str | None, _opt("target_modules", "; comma-separated")] = None,
    num_virtual_tokens: Annotated[int, _opt("num_virtual_tokens")] = DEFAULT["num_virtual_tokens"],
    tag_length: Annotated[int, _opt("tag_length")] = DEFAULT["tag_length"],
    max_length: Annotated[int, _opt("max_length")] = DEFAULT["max_length"],
    keep_context: Annotated[str, _opt("keep_context")] = DEFAULT["keep_context"],
    max_answer_tokens: Annotated[int, _opt("max_answer_tokens")] = DEFAULT["max_answer_tokens"],
    long_answer: Annotated[bool, _opt("long_answer")] = DEFAULT["long_answer"],
    class_weight: Annotated[str, _opt("class_weight")] = DEFAULT["class_weight"],
    seed: Annotated[int, _opt("seed")] = DEFAULT["seed"],
    limit: Annotated[int | None, _opt("limit")] = DEFAULT["limit"],
    save_every: Annotated[int, _opt("save_every")] = DEFAULT["save_every"],
    eval_batch_size: Annotated[int, _opt("eval_batch_size")] = DEFAULT["eval_batch_size"],
    device: Annotated[str, _opt("device")] = DEFAULT["device"],
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="continue the unfinished run in --out from its last checkpoint, with its saved settings",
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a run already in --out")] = False,
    num_beams: NumBeams = Decoding.num_beams,
    repetition_penalty: RepetitionPenalty = Decoding.repetition_penalty,
    temperature: Temperature = Decoding.temperature,
    sample: Sample = False,
    greedy: Greedy = False,
    answer_scoring: AnswerScoring = "parse",
):
    """Fine-tune a QA student (LoRA / prefix tuning on a causal LM, or a classification student) and
    evaluate it on dev and test."""
    options = dict(locals())
    from domainlm.qa.students.runner import finetune

    config = None
    if not (resume and (out / "config.yaml").is_file()):
        modules = [m.strip() for m in (target_modules or "").split(",") if m.strip()]
        data = data or os.environ.get("DOMAINLM_DATA", "")
        options.update(model=model or "", data=data, target_modules=modules or None)
        config = StudentConfig(**{name: options[name] for name in DEFAULT})
    report = finetune(
        config,
        out,
        resume=resume,
        overwrite=overwrite,
        decoding=_decoding(greedy, num_beams, repetition_penalty, temperature, sample, answer_scoring),
    )
    _print_report(report, out)


@app.command("evaluate-qa")
def evaluate_qa_command(
    run: Annotated[Path, typer.Option("--run", help="a finished student run directory")],
    split: Annotated[
        list[str] | None, typer.Option(help="split(s) to evaluate: dev, test (default both)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="where to write the report (default RUN/eval-<decoding>)")
    ] = None,
    num_beams: NumBeams = Decoding.num_beams,
    repetition_penalty: RepetitionPenalty = Decoding.repetition_penalty,
    temperature: Temperature = Decoding.temperature,
    sample: Sample = False,
    greedy: Greedy = False,
    answer_scoring: AnswerScoring = "parse",
):
    """Evaluate a student run: accuracy, macro-F1, confusion matrix and parse failures per split."""
    from domainlm.qa.students.runner import EVAL_SPLITS, evaluate_run

    splits = tuple(split or EVAL_SPLITS)
    unknown = [s for s in splits if s not in {"train", *EVAL_SPLITS}]
    if unknown:
        raise InputError(f"unknown split(s) {unknown}; choose from train, dev, test")
    decoding = _decoding(greedy, num_beams, repetition_penalty, temperature, sample, answer_scoring)
    report = evaluate_run(run, splits=splits, decoding=decoding, out=out)
    _print_report(report, out or run)


@app.command("compare")
def compare_command(
    runs: Annotated[
        list[str], typer.Option("--runs", help="student run directories, globs, or folders of runs")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="directory for compare.md, compare.json and compare.png")
    ],
):
    """One table of students x augmentation modes x methods, with the majority class and published figures."""
    from domainlm.qa.students.compare import compare_runs

    rows = compare_runs(runs, out)
    table = Table("", "student", "method", "augmentation", "data", "accuracy", "macro-F1")
    for r in rows:
        if r["kind"] != "published":  # the published figures are in the files; keep the console table narrow
            table.add_row(
                *(str(r[c] or "-") for c in ("kind", "student", "method", "augmentation", "data")),
                *(f"{r[c]:.3f}" if r[c] is not None else "-" for c in ("accuracy", "macro_f1")),
            )
    out_console.print(table)
    written = ", ".join(str(out / name) for name in ("compare.md", "compare.json", "compare.png"))
    out_console.print(f"written (with the published figures): {written}")


def _print_report(report: dict, where: Path) -> None:
    table = Table("split", "n", "accuracy", "macro-F1", "parse failures", "majority acc")
    for split, r in report["splits"].items():
        table.add_row(
            split,
            str(r["n"]),
            f"{r['accuracy']:.3f}",
            f"{r['macro_f1']:.3f}",
            str(r["parse_failures"]),
            f"{report['majority'][split]['accuracy']:.3f}",
        )
    out_console.print(table)
    out_console.print(f"report: {where}")
