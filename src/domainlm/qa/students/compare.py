"""One table of student runs (student x augmentation x method; runs that differ only in their seed as mean ±
standard deviation) beside the majority class and published figures."""

from __future__ import annotations

import glob
import json
import statistics
from dataclasses import fields
from pathlib import Path

import yaml

from domainlm import io, plots
from domainlm.errors import InputError
from domainlm.qa.students.anchors import PUBLISHED, SOURCE
from domainlm.qa.students.config import StudentConfig

AUGMENTATION_ORDER = ("none", "rewrite", "new", "combined")
COLUMNS = (
    "kind",
    "student",
    "method",
    "augmentation",
    "teacher",
    "data",
    "decoding",
    "settings",
    "accuracy",
    "macro_f1",
    "parse_failures",
    "dev_accuracy",
    "trainable_parameters",
    "seeds",
    "run",
)
# What makes two runs the same setting, seeds apart; their rows merge into one (mean and standard deviation)
SETTING = (*COLUMNS[COLUMNS.index("student") : COLUMNS.index("accuracy")], "trainable_parameters")
# Training settings: those that differ between the compared runs are named in each row (and keep rows apart).
RECIPE = (
    "epochs", "lr", "batch_size", "grad_accum", "warmup_ratio", "weight_decay", "max_grad_norm", "lora_rank",
    "lora_alpha", "lora_dropout", "target_modules", "num_virtual_tokens", "tag_length", "max_length",
    "keep_context", "max_answer_tokens", "long_answer", "class_weight", "limit",
)  # fmt: skip
# a setting an older run does not record was at its default
RECIPE_DEFAULTS = {f.name: f.default for f in fields(StudentConfig) if f.name in RECIPE}
SPREAD = ("accuracy", "macro_f1", "dev_accuracy")


def find_runs(patterns: list[str]) -> list[Path]:
    """Run directories named directly, by glob, or as the children of a folder of runs."""
    found: list[Path] = []
    for pattern in patterns:
        matches = [Path(p) for p in sorted(glob.glob(pattern))] or [Path(pattern)]
        for path in matches:
            if (path / "config.yaml").is_file():
                found.append(path)
            elif path.is_dir():
                found.extend(sorted(p.parent for p in path.glob("*/config.yaml")))
            else:
                raise InputError("no such run directory", source=str(path))
    if not found:
        raise InputError(f"no student runs (folders with config.yaml) found in {patterns}")
    return list(dict.fromkeys(found))


def run_row(path: Path) -> dict | None:
    """The table row of one finished run; None when it has no metrics yet."""
    if not (path / "metrics.json").is_file():
        return None
    config = yaml.safe_load((path / "config.yaml").read_text())
    report = json.loads((path / "metrics.json").read_text())
    test, dev = report["splits"].get("test", {}), report["splits"].get("dev", {})
    resolved = config.get("resolved", {})
    data = resolved.get("data", {})
    return {
        "kind": "ours",
        "student": _student_name(config["model"]),
        "method": config["method"],
        "augmentation": data.get("augmentation", "none"),
        "teacher": data.get("teacher"),
        "data": data_name(config["data"], data),
        "decoding": report.get("decoding") or "-",
        "accuracy": test.get("accuracy"),
        "macro_f1": test.get("macro_f1"),
        "parse_failures": test.get("parse_failures"),
        "dev_accuracy": dev.get("accuracy"),
        "trainable_parameters": resolved.get("parameters", {}).get("trainable"),
        "seeds": 1,
        "run": str(path),
        "_majority": report.get("majority", {}).get("test"),
        "_recipe": {key: config.get(key, RECIPE_DEFAULTS[key]) for key in RECIPE},
    }


def name_settings(rows: list[dict]) -> None:
    """Each row's `settings`: the training settings whose values differ between the rows ("lr 0.01,
    keep_context end"), "-" where every run was trained alike."""
    varying = [key for key in RECIPE if len({repr(row["_recipe"][key]) for row in rows}) > 1]
    for row in rows:
        recipe = row.pop("_recipe")
        row["settings"] = ", ".join(f"{key} {recipe[key]}" for key in varying) or "-"


def data_name(path: str, info: dict) -> str:
    """ "official test" / "paper test" when the split is known (so rows line up with the published figures),
    else the data directory's name."""
    return f"{info['split']} test" if info.get("split") else Path(path).name


def _student_name(model: str) -> str:
    return Path(model).name if "/" in model and Path(model).exists() else model


def compare_runs(patterns: list[str], out: str | Path) -> list[dict]:
    """Write compare.json, compare.md and compare.png (test accuracy and macro-F1 bars) into `out`; returns
    the rows (ours, majority baselines, published)."""
    runs = find_runs(patterns)
    ours = [row for row in map(run_row, runs) if row is not None]
    if not ours:
        raise InputError(f"none of the {len(runs)} run(s) has metrics.json yet")
    name_settings(ours)
    ours.sort(
        key=lambda r: (r["student"], _aug_rank(r["augmentation"]), r["method"], r["data"], r["settings"])
    )
    baselines = {}
    for row in ours:
        majority = row.pop("_majority")
        if majority and row["data"] not in baselines:
            baselines[row["data"]] = {
                "kind": "baseline",
                "student": f"majority class ({majority['label']})",
                "data": row["data"],
                "accuracy": majority["accuracy"],
                "macro_f1": majority["macro_f1"],
            }
    published = [
        {
            "kind": "published",
            "student": a["system"],
            "data": a["split"],
            "accuracy": a["accuracy"],
            "macro_f1": a["macro_f1"],
        }
        for a in PUBLISHED
    ]
    ours = merge_seeds(ours)
    spread = [f"{m}_std" for m in SPREAD]
    rows = [{c: r.get(c) for c in (*COLUMNS, *spread)} for r in [*ours, *baselines.values(), *published]]
    out = Path(out)
    io.write_json(out / "compare.json", {"rows": rows, "published_source": SOURCE})
    io.write_text(out / "compare.md", markdown(rows))
    plot(rows, out / "compare.png")
    return rows


def merge_seeds(rows: list[dict]) -> list[dict]:
    """One row per setting: runs that differ only in their seed become the mean over them, with the sample
    standard deviation (`<metric>_std`), the number of seeds, parse failures summed and the runs listed."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[c] for c in SETTING), []).append(row)
    merged = []
    for same in groups.values():
        row = dict(same[0])
        if len(same) > 1:
            for metric in SPREAD:
                values = [r[metric] for r in same if r[metric] is not None]
                row[metric] = statistics.fmean(values) if values else None
                row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
            failures = [r["parse_failures"] for r in same if r["parse_failures"] is not None]
            row["parse_failures"] = sum(failures) if failures else None
            row["seeds"], row["run"] = len(same), [r["run"] for r in same]
        merged.append(row)
    return merged


def plot(rows: list[dict], path: Path) -> None:
    """Our students beside the majority class and the published figures, on the same 0..1 axis."""
    bars = [
        (row_label(r), {"accuracy": r["accuracy"], "macro-F1": r["macro_f1"]})
        for r in rows
        if r["accuracy"] is not None
    ]
    plots.labelled_bars(bars, path, title="PubMedQA test: accuracy and macro-F1")


def row_label(row: dict) -> str:
    if row["kind"] == "ours":
        parts = [row["student"], row["method"], f"aug {row['augmentation']}", row["data"]]
        if row.get("decoding") == "likelihood":
            parts.append("likelihood")
        if row.get("settings") not in (None, "-"):
            parts.append(row["settings"])
        return " / ".join(str(p) for p in parts)
    return f"{row['kind']}: {row['student']} / {row['data']}"


def _aug_rank(name: str) -> int:
    return AUGMENTATION_ORDER.index(name) if name in AUGMENTATION_ORDER else len(AUGMENTATION_ORDER)


def markdown(rows: list[dict]) -> str:
    header = (
        "| | student | method | augmentation | teacher | data | decoding | settings | test accuracy | "
        "test macro-F1 | parse failures | dev accuracy | trainable params | seeds |"
    )
    lines = ["# PubMedQA students", "", header, "|" + "---|" * 14]
    for r in rows:
        cells = [_cell(column, r[column], r.get(f"{column}_std")) for column in COLUMNS if column != "run"]
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    lines += [
        "",
        f"Published figures: {SOURCE}. 'paper test' is the Dr. LLaMA split (file items 500-999), not "
        "the official test set.",
    ]
    return "\n".join(lines) + "\n"


def _cell(column: str, value, std=None):
    if column == "trainable_parameters":
        return f"{value:,}" if value else None
    if column in SPREAD:
        if value is None:
            return None
        return f"{value:.3f}" if std is None else f"{value:.3f} ± {std:.3f}"
    return value
