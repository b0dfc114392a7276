"""Plots people would rather look at than read: training curves and predicted-vs-true scatter."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from domainlm.io import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def training_curve(history: list[dict], path: str | Path, title: str = "training") -> None:
    """`history` rows hold `step` and any of `train_loss`, `val_loss`, `val_<metric>`: the raw per-step loss,
    its moving average (one step is noisy), and each validation metric on a second axis."""
    fig, ax = plt.subplots(figsize=(6, 4))
    train = [(h["step"], h["train_loss"]) for h in history if h.get("train_loss") is not None]
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, "-", color="tab:blue", alpha=0.3, linewidth=0.8, label="train_loss")
        ax.plot(steps, smoothed(losses), "-", color="tab:blue", label="train_loss (moving average)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    lines, labels = ax.get_legend_handles_labels()
    metrics = sorted({k for h in history for k, v in h.items() if k.startswith("val_") and v is not None})
    if metrics:
        val_ax = ax.twinx()
        for k, key in enumerate(metrics):
            pts = [(h["step"], h[key]) for h in history if h.get(key) is not None]
            val_ax.plot(*zip(*pts), "o--", color=f"C{k + 1}", markersize=4, label=key)
        val_ax.set_ylabel("validation")
        more_lines, more_labels = val_ax.get_legend_handles_labels()
        lines, labels = lines + more_lines, labels + more_labels
    if lines:
        ax.legend(lines, labels, fontsize=7)
    _save(fig, path)


def smoothed(values, window: int | None = None) -> list[float]:
    """Trailing moving average over `window` points (default: a tenth of them, at least 1)."""
    window = window or max(1, len(values) // 10)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def predicted_vs_true(y_true, y_pred, path: str | Path, title: str = "test set") -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y_true, y_pred, s=6, alpha=0.5)
    lo = min(min(y_true), min(y_pred))
    hi = max(max(y_true), max(y_pred))
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _save(fig, path)


def confusion(matrix, labels, path: str | Path, title: str = "confusion") -> None:
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center")
    ax.set_title(title)
    _save(fig, path)


def grouped_bars(groups: dict[str, dict[str, float]], path: str | Path, ylabel: str, title: str = "") -> None:
    """groups: method -> {fold: value}."""
    import numpy as np

    methods = list(groups)
    folds = sorted({f for g in groups.values() for f in g})
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(5, len(folds) * 1.2), 4))
    for i, m in enumerate(methods):
        xs = np.arange(len(folds)) + i * width
        ax.bar(xs, [groups[m].get(f, float("nan")) for f in folds], width, label=m)
    ax.set_xticks(np.arange(len(folds)) + width * (len(methods) - 1) / 2, folds)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    _save(fig, path)


def labelled_bars(rows: list[tuple[str, dict[str, float | None]]], path: str | Path, title: str = "") -> None:
    """Horizontal bars, one group per row (top to bottom in the given order), one bar per metric; a
    missing value leaves its bar out."""
    import numpy as np

    metrics = list(dict.fromkeys(m for _, values in rows for m in values))
    height = 0.8 / max(1, len(metrics))
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(rows) * max(1, len(metrics)) + 1)))
    ys = np.arange(len(rows))[::-1]
    for i, metric in enumerate(metrics):
        values = [np.nan if v.get(metric) is None else v[metric] for _, v in rows]
        ax.barh(ys - i * height, values, height, label=metric)
    ax.set_yticks(ys - height * (len(metrics) - 1) / 2, [label for label, _ in rows], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)
