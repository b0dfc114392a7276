"""Metrics for regression, ranking and classification. Every function takes plain sequences."""

from __future__ import annotations

import math

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
    return _correlation(stats.pearsonr, y_true, y_pred)


def spearman(y_true, y_pred) -> float:
    return _correlation(stats.spearmanr, y_true, y_pred)


def _correlation(statistic, y_true, y_pred) -> float:
    """NaN where a correlation is undefined: fewer than two pairs, or either side constant."""
    t, p = _arrays(y_true, y_pred)
    if t.size < 2 or np.ptp(t) == 0 or np.ptp(p) == 0:
        return float("nan")
    return float(statistic(t, p)[0])


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


def concordance_index(y_true, y_pred) -> float:
    """Concordance index: over ALL comparable pairs (y_true_i != y_true_j), the fraction ordered the same way
    by y_pred; a tie in y_pred counts 0.5, a tie in y_true is not comparable. NaN with no comparable pair.

    Exact and O(n log n): with P concordant and Q discordant pairs among the C comparable ones,
    CI = (P + 0.5 * (C - P - Q)) / C = (1 + (P - Q) / C) / 2, and P - Q is the numerator of Kendall's tau-b,
    which scipy counts by merge sort; it is an integer, so it is recovered exactly by rounding.

    DeepDTA's `get_cindex` (source/emetrics.py) loops over i > j and counts a pair only when Y[i] > Y[j]; a
    pair whose earlier item has the larger true value is never counted. It thus scores about half of the
    comparable pairs (which half depends on the data order) in O(n^2) time; on a random order its value is
    close to, not equal to, this one. GraphDTA's `ci` (utils.py) sorts by y first, so it counts every
    comparable pair and equals this one, also in O(n^2).
    """
    t, p = _arrays(y_true, y_pred)
    if np.isnan(t).any() or np.isnan(p).any():
        raise ValueError("concordance_index: NaN in the inputs")
    n_pairs = t.size * (t.size - 1) // 2
    comparable = n_pairs - _tied_pairs(t)
    if comparable == 0:
        return float("nan")
    pred_untied = n_pairs - _tied_pairs(p)
    if pred_untied == 0:
        return 0.5  # every prediction equal: every comparable pair is a tie
    if t.size == 2:  # scipy's p-value divides by n - 2
        p_minus_q = int(np.sign((t[1] - t[0]) * (p[1] - p[0])))
    else:
        with np.errstate(all="ignore"):  # the p-value we do not use may warn
            tau_b = stats.kendalltau(t, p, method="asymptotic").statistic
        p_minus_q = round(tau_b * np.sqrt(float(comparable)) * np.sqrt(float(pred_untied)))
    return (comparable + p_minus_q) / (2 * comparable)  # one division of integers: exact to the last bit


def _tied_pairs(x: np.ndarray) -> int:
    _, counts = np.unique(x, return_counts=True)
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def rm2(y_true, y_pred) -> float:
    """The modified squared correlation r_m^2 exactly as the DeepDTA family computes it (DeepDTA
    source/emetrics.py `get_rm2`, copied by its successors), so numbers compare with theirs:

    r2 = Pearson(y_true, y_pred)^2; k = sum(y_true * y_pred) / sum(y_pred^2) (slope through the origin);
    r02 = 1 - sum((y_true - k * y_pred)^2) / sum((y_true - mean(y_true))^2);
    rm2 = r2 * (1 - sqrt(|r2^2 - r02^2|)).

    Note their code squares r2 and r02 inside the root; Roy et al.'s original r_m^2 uses |r2 - r02|.
    """
    t, p = _arrays(y_true, y_pred)
    if t.size < 2 or np.ptp(t) == 0 or np.ptp(p) == 0:
        return float("nan")
    spread = np.sum((t - t.mean()) ** 2)
    r2_ = float(np.corrcoef(t, p)[0, 1] ** 2)
    k = np.sum(t * p) / np.sum(p * p)
    r02 = float(1 - np.sum((t - k * p) ** 2) / spread)
    return float(r2_ * (1 - np.sqrt(abs(r2_**2 - r02**2))))


REGRESSION_METRICS = {
    "mse": mse,
    "mae": mae,
    "pearson": pearson,
    "spearman": spearman,
    "r2": r2,
    "ci": concordance_index,
    "rm2": rm2,
}
CLASSIFICATION_METRICS = {"accuracy": accuracy, "macro_f1": macro_f1}


def compute(names, y_true, y_pred) -> dict[str, float]:
    """Metrics by name, e.g. compute(["mse", "ci"], y, p)."""
    table = {**REGRESSION_METRICS, **CLASSIFICATION_METRICS}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(table)}")
    return {n: table[n](y_true, y_pred) for n in names}


# The one home of metric direction: everything else asks here.
HIGHER_IS_BETTER = frozenset(
    {"pearson", "spearman", "r2", "ci", "rm2", "accuracy", "macro_f1", "chrf", "bleu", "spbleu"}
)
LOWER_IS_BETTER = frozenset({"mse", "mae", "rmse", "loss", "lm_loss", "val_loss"})


def higher_is_better(name: str) -> bool:
    if name in HIGHER_IS_BETTER:
        return True
    if name in LOWER_IS_BETTER:
        return False
    raise ValueError(f"no known direction for metric {name!r}")


def selection_value(name: str, value: float) -> float:
    """A number where lower is better, whatever the metric; NaN never wins."""
    if value != value:
        return math.inf
    return -value if higher_is_better(name) else value


def is_better(name: str, ours: float | None, theirs: float) -> bool:
    """Whether `ours` beats `theirs` on metric `name` (None never does)."""
    if ours is None or ours != ours:
        return False
    return ours > theirs if higher_is_better(name) else ours < theirs
