"""Classical regressors on fixed features: the yardstick every learned method must beat.

Methods register by name (`mean`, `nearest_neighbour`, `random_forest`, `gradient_boosting`) and share one
small API: `fit(X, y, X_val=None, y_val=None)` then `predict(X)`; they have no neural parameters, so
`trainable_params` is None. `featurize_task` turns a task's splits into feature matrices (with the featurizer
its `TaskSpec` names) and `run_baseline` fits one method on them and returns a row of metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from domainlm import metrics as metric_functions
from domainlm.errors import DomainLMError
from domainlm.registry import Registry
from domainlm.tasks.base import TaskData, TaskSpec

_METHODS = Registry("classical method")
register_method = _METHODS.register


def method_names() -> list[str]:
    return _METHODS.names()


def make_regressor(name: str, seed: int = 0, **params):
    return _METHODS.get(name)(seed=seed, **params)


class ClassicalRegressor:
    trainable_params = None  # no neural parameters: reported as "n/a"
    name = ""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, X, y, X_val=None, y_val=None) -> ClassicalRegressor:
        raise NotImplementedError

    def predict(self, X) -> np.ndarray:
        raise NotImplementedError

    def refit_params(self) -> dict:
        """What fitting with a validation split selected, as parameters for a refit without one."""
        return {}


@register_method("mean")
class MeanRegressor(ClassicalRegressor):
    """Predicts the training mean for every input."""

    def fit(self, X, y, X_val=None, y_val=None):
        self.mean_ = float(np.mean(y))
        return self

    def predict(self, X):
        return np.full(len(X), self.mean_)


def tanimoto_similarity(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """a.b / (|a|^2 + |b|^2 - a.b): Tanimoto on bit vectors, its usual continuous extension otherwise."""
    dot = A @ B.T
    denom = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - dot
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, dot / denom, 1.0)  # two all-zero vectors are identical


def cosine_similarity(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    from sklearn.metrics.pairwise import cosine_similarity as sk_cosine

    return sk_cosine(A, B)


def euclidean_similarity(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """1 / (1 + Euclidean distance), so it averages with the other similarities."""
    from sklearn.metrics.pairwise import euclidean_distances

    return 1.0 / (1.0 + euclidean_distances(A, B))


SIMILARITIES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "tanimoto": tanimoto_similarity,
    "cosine": cosine_similarity,
    "euclidean": euclidean_similarity,
}


@register_method("nearest_neighbour")
class NearestNeighbourRegressor(ClassicalRegressor):
    """1-NN: the label of the most similar training input (the mean label when several tie).

    `metric` is one similarity name for all columns, or a list of (column slice, name) blocks whose
    similarities are averaged, e.g. Tanimoto on a drug fingerprint and cosine on a protein composition."""

    def __init__(
        self, seed: int = 0, metric: str | Sequence[tuple[slice, str]] = "tanimoto", chunk_size: int = 512
    ):
        super().__init__(seed)
        blocks = [(slice(None), metric)] if isinstance(metric, str) else list(metric)
        unknown = [m for _, m in blocks if m not in SIMILARITIES]
        if unknown or not blocks:
            raise DomainLMError(f"unknown similarity {unknown}; known: {', '.join(SIMILARITIES)}")
        self.blocks = blocks
        self.chunk_size = chunk_size

    def fit(self, X, y, X_val=None, y_val=None):
        self.X_ = np.asarray(X, dtype=np.float32)
        self.y_ = np.asarray(y, dtype=np.float64)
        return self

    def predict(self, X):
        X = np.asarray(X, dtype=np.float32)
        out = np.empty(len(X))
        for start in range(0, len(X), self.chunk_size):
            chunk = X[start : start + self.chunk_size]
            sim = sum(SIMILARITIES[m](chunk[:, cols], self.X_[:, cols]) for cols, m in self.blocks) / len(
                self.blocks
            )
            nearest = sim >= sim.max(axis=1, keepdims=True) - 1e-6  # float32 ties
            out[start : start + len(chunk)] = (nearest @ self.y_) / nearest.sum(axis=1)
        return out


@register_method("random_forest")
class RandomForestMethod(ClassicalRegressor):
    """scikit-learn random forest; extra keyword arguments go to `RandomForestRegressor`."""

    def __init__(
        self, seed: int = 0, n_estimators: int = 500, max_features="sqrt", n_jobs: int = -1, **params
    ):
        super().__init__(seed)
        self.params = dict(n_estimators=n_estimators, max_features=max_features, n_jobs=n_jobs, **params)

    def fit(self, X, y, X_val=None, y_val=None):
        from sklearn.ensemble import RandomForestRegressor

        self.model_ = RandomForestRegressor(random_state=self.seed, **self.params).fit(X, y)
        return self

    def predict(self, X):
        return self.model_.predict(X)


@register_method("gradient_boosting")
class GradientBoostingMethod(ClassicalRegressor):
    """LightGBM. With a validation split it stops early (patience `early_stopping_rounds`) and predicts with
    the best iteration; without one it runs all `n_estimators` rounds. Extra keyword arguments are LightGBM
    parameters (e.g. `min_data_in_leaf`).

    The round cap is high enough for early stopping to decide: Davis (setting 1, fold 0 held out) stops at
    round 2,219, and capped at 1,000 rounds its test MSE was 0.312 instead of 0.299 (0.302 instead of 0.284
    refit on train + val). One thread by default: on a 2-core machine that other jobs share, LightGBM's
    OpenMP threads wait on each other (1,000 rounds on Davis took 46 s with 1 thread and 445 s with 2, load
    ~2); on a quiet or many-core machine pass `n_jobs=-1` (all cores)."""

    def __init__(
        self,
        seed: int = 0,
        n_estimators: int = 5000,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        feature_fraction: float = 0.5,
        max_bin: int = 63,
        early_stopping_rounds: int = 50,
        n_jobs: int = 1,
        **params,
    ):
        super().__init__(seed)
        self.n_estimators = n_estimators
        self.early_stopping_rounds = early_stopping_rounds
        self.params = dict(
            objective="regression",
            learning_rate=learning_rate,
            num_leaves=num_leaves,
            feature_fraction=feature_fraction,
            max_bin=max_bin,
            num_threads=0 if n_jobs == -1 else n_jobs,  # 0: LightGBM's default, all cores
            seed=seed,
            verbosity=-1,
            **params,
        )

    def fit(self, X, y, X_val=None, y_val=None):
        import lightgbm

        train = lightgbm.Dataset(X, y, params=self.params)
        valid, callbacks = [], []
        if X_val is not None and len(X_val):
            valid = [lightgbm.Dataset(X_val, y_val, reference=train)]
            callbacks = [lightgbm.early_stopping(self.early_stopping_rounds, verbose=False)]
        self.booster_ = lightgbm.train(
            self.params, train, self.n_estimators, valid_sets=valid, callbacks=callbacks
        )
        return self

    def predict(self, X):
        return self.booster_.predict(X, num_iteration=self.booster_.best_iteration or None)

    def refit_params(self):
        best = self.booster_.best_iteration  # 0 when no validation split stopped it early
        return {"n_estimators": best} if best else {}


def fit_predict(
    name: str, X_train, y_train, X_eval_list, seed: int = 0, *, val=None, **params
) -> list[np.ndarray]:
    """Fit method `name` on (X_train, y_train) and predict each matrix of `X_eval_list`.
    `val=(X_val, y_val)` enables early stopping where the method has it."""
    X_val, y_val = val if val is not None else (None, None)
    model = make_regressor(name, seed=seed, **params).fit(X_train, y_train, X_val, y_val)
    return [model.predict(X) for X in X_eval_list]


# ---- features of a task ----


@dataclass
class TaskFeatures:
    """Feature matrices and labels per split ("train", "val", "test"), and named column blocks."""

    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    blocks: dict[str, slice]  # block name -> its columns
    block_metrics: dict[str, str]  # block name -> nearest-neighbour similarity
    kind: str  # the task featurized
    info: dict = field(default_factory=dict)

    def train_and_val(self) -> tuple[np.ndarray, np.ndarray]:
        """The training and validation rows together, for a refit after model selection."""
        splits = ("train", "val")
        return np.concatenate([self.X[s] for s in splits]), np.concatenate([self.y[s] for s in splits])

    def method_params(self, name: str) -> dict:
        """Per-method defaults the features imply (the nearest-neighbour similarity per block)."""
        if name == "nearest_neighbour":
            return {"metric": [(self.blocks[b], m) for b, m in self.block_metrics.items()]}
        return {}


def featurize_task(
    task_data: TaskData, spec: TaskSpec, *, drop_constant: bool = True, drop_duplicates: bool | None = None
) -> TaskFeatures:
    """Feature matrices for every split of `task_data`, built by the task's featurizer (`spec.featurizer`).

    Columns constant over the training split carry no signal for any method here; `drop_constant` removes
    them (most of Davis' 2048 fingerprint bits with only 68 drugs). `drop_duplicates` keeps one of each
    group of identical (features, label) training rows; by default only for order-free pair features
    (synergy), where each swapped copy equals its original: every pair would be there twice, doubling the
    fit time and changing nothing else. Elsewhere identical rows are real repeated measurements (Davis
    lists mutants with the wild-type sequence) and keep their weight."""
    featurizer = spec.featurizer
    if featurizer is None:
        raise DomainLMError(f"task {spec.name} has no classical features (its TaskSpec names no featurizer)")
    if not task_data.train:
        raise DomainLMError("the training split is empty")
    splits = task_data.splits()
    raw = {
        name: featurizer.blocks(examples, task_data.train) if examples else None
        for name, examples in splits.items()
    }
    X, blocks, block_metrics, start = {name: [] for name in splits}, {}, {}, 0
    for b, (block_name, metric, train_block) in enumerate(raw["train"]):
        keep = np.ptp(train_block, axis=0) > 0 if drop_constant else np.ones(train_block.shape[1], dtype=bool)
        blocks[block_name] = slice(start, start + int(keep.sum()))
        block_metrics[block_name] = metric
        start += int(keep.sum())
        for name in splits:
            if raw[name] is not None:
                X[name].append(raw[name][b][2][:, keep].astype(np.float32))
    matrices = {
        name: np.concatenate(parts, axis=1) if parts else np.zeros((0, start), dtype=np.float32)
        for name, parts in X.items()
    }
    labels = {
        name: np.array([e.label for e in examples], dtype=np.float64) for name, examples in splits.items()
    }
    n_train = len(labels["train"])
    if drop_duplicates is None:
        drop_duplicates = featurizer.order_free
    if drop_duplicates:
        matrices["train"], labels["train"] = _unique_rows(matrices["train"], labels["train"])
    info = {"n_features": start, "train_duplicates_dropped": n_train - len(labels["train"])}
    return TaskFeatures(matrices, labels, blocks, block_metrics, spec.name, info=info)


def _unique_rows(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first of each group of identical (features, label) rows, in their original order."""
    first: dict[bytes, int] = {}
    for i in range(len(y)):
        first.setdefault(X[i].tobytes() + y[i].tobytes(), i)
    keep = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    return X[keep], y[keep]


def run_baseline(
    name: str,
    features: TaskFeatures,
    metric_names: Sequence[str],
    *,
    seed: int = 0,
    refit: bool = False,
    **params,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Fit `name` on the training split (validation split for early stopping where the method has it) and
    score val and test. With `refit` (and a validation split), fit it again on train + val with what the
    validation split selected (e.g. LightGBM's number of rounds) and score test with that model; val is
    still scored by the first, which never saw it. Returns (row, predictions per split); the row holds
    `method`, `val_<metric>`, `test_<metric>`, `trainable_params` (None), `seconds` (fit + predict wall
    time), `seed`, `refit` (whether test was scored by a refit model) and `n_fit` (the rows it was fit on)."""
    params = {**features.method_params(name), **params}
    started = time.perf_counter()
    model = make_regressor(name, seed=seed, **params)
    val = features.X["val"], features.y["val"]
    X_fit, y_fit = features.X["train"], features.y["train"]
    model.fit(X_fit, y_fit, *(val if len(val[1]) else (None, None)))
    predictions = {
        split: model.predict(features.X[split]) for split in ("val", "test") if len(features.y[split])
    }
    refit = refit and len(val[1]) > 0
    if refit:
        X_fit, y_fit = features.train_and_val()
        model = make_regressor(name, seed=seed, **{**params, **model.refit_params()}).fit(X_fit, y_fit)
        if len(features.y["test"]):
            predictions["test"] = model.predict(features.X["test"])
    seconds = time.perf_counter() - started
    row: dict = {"method": name}
    for split, pred in predictions.items():
        scores = metric_functions.compute(metric_names, features.y[split], pred)
        row.update({f"{split}_{metric}": value for metric, value in scores.items()})
    row.update(
        trainable_params=model.trainable_params,
        seconds=round(seconds, 2),
        seed=seed,
        refit=refit,
        n_fit=len(y_fit),
    )
    return row, predictions
