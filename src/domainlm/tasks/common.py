"""Data helpers every preset shares: where the data sets live and how smoke runs take a subset."""

from __future__ import annotations

import os
import random
from pathlib import Path

from domainlm.errors import InputError
from domainlm.tasks.base import Example

DATA_ENV = "DOMAINLM_DATA"


def data_root(data_dir: str | os.PathLike | None) -> Path:
    """The shared data directory: `data_dir`, or $DOMAINLM_DATA when it is None."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_ENV)
        if not data_dir:
            raise InputError(f"no data directory given; pass --data DIR or set {DATA_ENV}")
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError("data directory not found", source=str(root))
    return root


def resolve_dataset_dir(data_dir, subdir: str, marker: str) -> Path:
    """The folder holding `marker`: `data_dir` itself, or `data_dir/subdir` when `data_dir` is the shared data
    root. `data_dir=None` falls back to the DOMAINLM_DATA environment variable."""
    root = data_root(data_dir)
    for candidate in (root, root / subdir):
        if (candidate / marker).is_file():
            return candidate
    raise InputError(f"found neither {root / marker} nor {root / subdir / marker}", source=str(root))


def dataset_dir_with(data_dir, subdir: str, pattern: str, what: str) -> Path:
    """The folder holding files matching `pattern`: `data_dir` itself, or `data_dir/subdir` when `data_dir`
    is the shared data root; `what` names those files in the error."""
    root = data_root(data_dir)
    for candidate in (root, root / subdir):
        if any(candidate.glob(pattern)):
            return candidate
    raise InputError(f"no {what} in {root} or {root / subdir}", source=str(root))


def shuffled_split(items: list, seed: int, fractions=(0.8, 0.1, 0.1)) -> dict[str, list]:
    """`items` shuffled by `random.Random(seed)`, then cut: the first int(fractions[0] n) train, the next
    int(fractions[1] n) validation, the rest test."""
    items = list(items)
    random.Random(seed).shuffle(items)
    n_train = int(len(items) * fractions[0])
    n_eval = n_train + int(len(items) * fractions[1])
    return {"train": items[:n_train], "val": items[n_train:n_eval], "test": items[n_eval:]}


def limit_examples(examples: list[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """At most `limit` examples, drawn at random with a fixed seed and kept in their order (for smoke runs:
    the first rows of a sorted file would cover only a few drugs)."""
    if limit is None or len(examples) <= limit:
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]
