"""The task interface every preset and user task shares.

A task turns a data directory into a `TaskData`: rows (dicts of template fields) with labels, split into
train / val / test, plus counts of rows skipped as invalid. Presets are just `TaskSpec`s plus a loader.
"""

from __future__ import annotations

import importlib
import inspect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from domainlm.errors import DomainLMError

if TYPE_CHECKING:
    from domainlm.tasks.featurizers import Featurizer


@dataclass
class Example:
    """One labelled input. `fields` fills the template; `group` (e.g. a protein id) helps batching."""

    id: str
    fields: dict[str, Any]
    label: float | int | None
    group: str | None = None
    line: int | None = None  # the 1-based line of a row read from a table, for messages naming it

    @property
    def where(self) -> str:
        """How a message names this example in its file: the line, or else its id."""
        return f"line {self.line}" if self.line is not None else f"item {self.id}"


@dataclass
class TaskData:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    skipped: Counter = field(default_factory=Counter)  # reason -> count, reported in metrics and log
    info: dict[str, Any] = field(default_factory=dict)  # e.g. label transform, number of truncated inputs

    def splits(self) -> dict[str, list[Example]]:
        return {"train": self.train, "val": self.val, "test": self.test}


HEADS = ("regression", "classification", "generation")


@dataclass
class TaskSpec:
    """What a task is and all a preset knows about it. `loader(data_dir, spec, **options)` returns a
    `TaskData`, split as the task's protocol says."""

    name: str
    template: str
    head: str = "regression"  # "regression" | "classification" | "generation" (a generative function tag)
    n_classes: int | None = None
    metrics: tuple[str, ...] = ("mse", "mae", "pearson", "spearman")
    primary_metric: str = "mse"  # model selection on the validation split; lower is better for losses
    char_level_tags: tuple[str, ...] = ()  # domain tags whose data spans are tokenised one character a token
    loader: Callable[..., TaskData] | None = None
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)  # training defaults (epochs, lr, ...)
    # predict time: (rows, data_dir, source, lines) -> rows filled and checked (e.g. SMILES from drug names)
    prepare_rows: Callable[..., list[dict]] | None = None
    # bench: the folds as (fold name, extra loader options); by default one, the loader's own split
    folds: tuple[tuple[str, dict[str, Any]], ...] = (("test", {}),)
    featurizer: Featurizer | None = None  # the classical baselines' view of an example (None: no baselines)
    paper_reference: str = ""  # the paper's LLaMA-7B test numbers, printed under bench tables for orientation
    # published expert models on the same data and protocol: (model, {test metric: value}); a loader that
    # reads one of several data sets puts the anchors of the one it read in TaskData.info (`anchors_for`)
    published_anchors: tuple[tuple[str, dict[str, float]], ...] = ()

    def __post_init__(self):
        if self.head not in HEADS:
            raise DomainLMError(
                f"task {self.name}: head must be one of {', '.join(HEADS)}, got {self.head!r}"
            )
        if self.head == "classification" and (self.n_classes is None or self.n_classes < 2):
            raise DomainLMError(f"task {self.name}: a classification head needs n_classes >= 2")

    def load(self, data_dir, **options) -> TaskData:
        if self.loader is None:
            raise DomainLMError(f"task {self.name} has no loader")
        known = list(inspect.signature(self.loader).parameters)[2:]  # after (data_dir, spec)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise DomainLMError(f"task {self.name}: unknown option(s) {unknown}; it takes {', '.join(known)}")
        return self.loader(data_dir, self, **options)

    def anchors_for(self, info: dict[str, Any]) -> tuple[tuple[str, dict[str, float]], ...]:
        """The published anchors comparable with data its loader described by `info`: those the loader
        named (it knows which data set it read; none for one without published results), else the task's."""
        if "published_anchors" in info:
            return tuple((name, dict(metrics)) for name, metrics in info["published_anchors"])
        return self.published_anchors


_REGISTRY: dict[str, TaskSpec] = {}
# Modules holding presets; imported on first lookup so `import domainlm.tasks` stays light.
_PRESET_MODULES = [
    "domainlm.tasks.properties",
    "domainlm.tasks.dta",
    "domainlm.tasks.synergy",
    "domainlm.tasks.translation",
]


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
