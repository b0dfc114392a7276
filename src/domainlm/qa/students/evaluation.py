"""Scores of a student's predictions (accuracy, 3-class macro-F1, confusion matrix, parse failures) and the
report files: metrics.json, metrics.md, confusion PNGs and predictions JSONL."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path

from domainlm import io, metrics, plots
from domainlm.qa.data import LABELS
from domainlm.qa.students.student import Prediction


def score(predictions: list[Prediction]) -> dict:
    from sklearn.metrics import confusion_matrix

    gold = [p.label for p in predictions]
    predicted = [p.predicted for p in predictions]
    return {
        "n": len(predictions),
        "accuracy": metrics.accuracy(gold, predicted),
        "macro_f1": metrics.macro_f1(gold, predicted, labels=list(LABELS)),
        "parse_failures": sum(not p.matched for p in predictions),
        # rows: gold, columns: predicted
        "confusion": confusion_matrix(gold, predicted, labels=list(LABELS)).tolist(),
        "predicted_counts": {label: predicted.count(label) for label in LABELS},
    }


def majority_baseline(train_items, items) -> dict:
    """Always answering the most common training label."""
    label = Counter(item.label for item in train_items).most_common(1)[0][0]
    result = score([Prediction(item.id, item.label, label) for item in items])
    return {"label": label, "accuracy": result["accuracy"], "macro_f1": result["macro_f1"]}


def write_report(directory: Path, report: dict, predictions: dict[str, list[Prediction]], title: str) -> None:
    """`report["splits"]` maps split -> score(); every split also gets a confusion plot and a predictions
    file."""
    directory = Path(directory)
    io.write_json(directory / "metrics.json", report)
    io.write_text(directory / "metrics.md", markdown(report, title))
    for split, result in report["splits"].items():
        plots.confusion(
            result["confusion"], list(LABELS), directory / f"confusion_{split}.png", title=f"{title}: {split}"
        )
        io.write_jsonl(directory / f"predictions_{split}.jsonl", (asdict(p) for p in predictions[split]))


def markdown(report: dict, title: str) -> str:
    lines = [f"# {title}", ""]
    if report.get("decoding"):
        lines += [f"Decoding: {report['decoding']}", ""]
    lines += [
        "| split | n | accuracy | macro-F1 | parse failures | majority acc | majority F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, r in report["splits"].items():
        base = report.get("majority", {}).get(split, {})
        lines.append(
            f"| {split} | {r['n']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['parse_failures']} | "
            f"{_fmt(base.get('accuracy'))} | {_fmt(base.get('macro_f1'))} |"
        )
    for split, r in report["splits"].items():
        lines += [
            "",
            f"Confusion matrix, {split} (rows: gold, columns: predicted)",
            "",
            "| gold \\ predicted | " + " | ".join(LABELS) + " |",
            "|---|" + "---|" * len(LABELS),
        ]
        lines += [
            f"| {label} | " + " | ".join(str(v) for v in row) + " |"
            for label, row in zip(LABELS, r["confusion"], strict=True)
        ]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
