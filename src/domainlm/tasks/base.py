"""The task interface every preset and user task shares.

A task turns a data directory into a `TaskData`: rows (dicts of template fields) with labels, split into
train / val / test, plus counts of rows skipped as invalid. Presets are just `TaskSpec`s plus a loader.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domainlm.errors import DomainLMError


@dataclass
class Example:
    """One labelled input. `fields` fills the template; `group` (e.g. a protein id) helps batching."""

    id: str
    fields: dict[str, Any]
    label: float | int | None
    group: str | None = None


@dataclass
class TaskData:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    skipped: Counter = field(default_factory=Counter)  # reason -> count, reported in metrics and log
    info: dict[str, Any] = field(default_factory=dict)  # e.g. label transform, number of truncated inputs

    def splits(self) -> dict[str, list[Example]]:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass
class TaskSpec:
    """What a task is. `loader(data_dir, spec, **options)` returns a `TaskData`."""

    name: str
    template: str
    head: str = "regression"  # "regression" | "classification"
    n_classes: int | None = None
    metrics: tuple[str, ...] = ("mse", "mae", "pearson", "spearman")
    primary_metric: str = "mse"  # model selection on the validation split; lower is better for losses
    char_level_tags: tuple[str, ...] = ()  # domain tags whose data spans are tokenised one character a token
    loader: Callable[..., TaskData] | None = None
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)  # training defaults (epochs, lr, ...)
    # predict time: (rows, data_dir, source, lines) -> rows filled and checked (e.g. SMILES from drug names)
    prepare_rows: Callable[..., list[dict]] | None = None

    def __post_init__(self):
        if self.head not in {"regression", "classification"}:
            raise DomainLMError(
                f"task {self.name}: head must be regression or classification, got {self.head!r}"
            )
        if self.head == "classification" and (self.n_classes is None or self.n_classes < 2):
            raise DomainLMError(f"task {self.name}: a classification head needs n_classes >= 2")

    def load(self, data_dir, **options) -> TaskData:
        if self.loader is None:
            raise DomainLMError(f"task {self.name} has no loader")
        return self.loader(data_dir, self, **options)


_REGISTRY: dict[str, TaskSpec] = {}
# Modules holding presets; imported on first lookup so `import domainlm.tasks` stays light.
_PRESET_MODULES = ["domainlm.tasks.properties", "domainlm.tasks.dta", "domainlm.tasks.synergy"]


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in _REGISTRY:
        raise DomainLMError(f"task {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _load_presets() -> None:
    for mod in _PRESET_MODULES:
        importlib.import_module(mod)


def get_task(name: str) -> TaskSpec:
    _load_presets()
    if name not in _REGISTRY:
        raise DomainLMError(f"unknown task {name!r}; presets: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[name]


def task_names() -> list[str]:
    _load_presets()
    return sorted(_REGISTRY)
