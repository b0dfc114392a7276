"""Metrics for regression, ranking and classification. Every function takes plain sequences."""

from __future__ import annotations

import numpy as np
from scipy import stats


def _arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values, y_pred {p.size}")
    return t, p


def mse(y_true, y_pred) -> float:
    t, p = _arrays(y_true, y_pred)
    return float(np.mean((t - p) ** 2))


def mae(y_true, y_pred) -> float:
    t, p = _arrays(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def pearson(y_true, y_pred) -> float:
    t, p = _arrays(y_true, y_pred)
    if t.size < 2 or np.std(t) == 0 or np.std(p) == 0:
        return float("nan")
    return float(stats.pearsonr(t, p)[0])


def spearman(y_true, y_pred) -> float:
    t, p = _arrays(y_true, y_pred)
    if t.size < 2 or np.std(t) == 0 or np.std(p) == 0:
        return float("nan")
    return float(stats.spearmanr(t, p)[0])


def r2(y_true, y_pred) -> float:
    t, p = _arrays(y_true, y_pred)
    denom = np.sum((t - t.mean()) ** 2)
    return float(1 - np.sum((t - p) ** 2) / denom) if denom > 0 else float("nan")


def accuracy(y_true, y_pred) -> float:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(t == p)) if t.size else float("nan")


def macro_f1(y_true, y_pred, labels=None) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


REGRESSION_METRICS = {"mse": mse, "mae": mae, "pearson": pearson, "spearman": spearman, "r2": r2}
CLASSIFICATION_METRICS = {"accuracy": accuracy, "macro_f1": macro_f1}


def compute(names, y_true, y_pred) -> dict[str, float]:
    """Metrics by name, e.g. compute(["mse", "ci"], y, p)."""
    table = {**REGRESSION_METRICS, **CLASSIFICATION_METRICS, **_extra_metrics()}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(table)}")
    return {n: table[n](y_true, y_pred) for n in names}


def _extra_metrics() -> dict:
    # Ranking metrics (concordance index, rm2) live beside these once defined.
    out = {}
    for name in ("concordance_index", "rm2"):
        fn = globals().get(name)
        if fn is not None:
            out["ci" if name == "concordance_index" else name] = fn
    return out
