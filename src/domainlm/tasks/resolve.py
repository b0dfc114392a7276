"""Which task a run trains on, as a run's configuration records it, and the (TaskSpec, TaskData) it names:
a preset by name, or a user file with a template and a label column."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError
from domainlm.tasks.base import TaskData, TaskSpec, get_task

METRICS_BY_HEAD = {
    "regression": ("mse", "mae", "pearson", "spearman"),
    "classification": ("accuracy", "macro_f1"),
    "generation": ("chrf", "bleu"),
}


@dataclass
class TaskSource:
    """A preset (`preset`, its data read from `data_dir`) or a user file (`data` with `template` and
    `label_column`), and the limits a quick run sets. Checked when resolved, so a run's saved
    configuration always reads back."""

    preset: str | None = None
    data_dir: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)  # preset loader options, e.g. {"fold": 2}
    data: str | None = None
    template: str | None = None  # a user task's template, or one that replaces the preset's
    label_column: str | None = None
    head: str = "regression"
    n_classes: int | None = None
    id_column: str | None = None
    split_column: str | None = None
    char_level: tuple[str, ...] = ()  # user task: domain tags whose data is read one character a token
    limit_train: int | None = None
    limit_eval: int | None = None
    skip_invalid: bool = False

    def __post_init__(self):
        # Paths and lists as YAML writes and reads them back, so a saved source compares equal.
        self.data_dir = None if self.data_dir is None else str(self.data_dir)
        self.data = None if self.data is None else str(self.data)
        self.char_level = tuple(self.char_level)
        dataset = self.task_options.get("dataset")
        if isinstance(dataset, str) and ("/" in dataset or Path(dataset).expanduser().is_dir()):
            # a folder path: saved absolute, so eval / predict / --resume find it from any directory
            self.task_options = {**self.task_options, "dataset": str(Path(dataset).expanduser().resolve())}

    def template_text(self) -> str | None:
        """The template the run's tags were trained with."""
        return self.template or (get_task(self.preset).template if self.preset else None)


def resolve_task(source: TaskSource, *, seed: int = 0) -> tuple[TaskSpec, TaskData]:
    """The task and its data; `seed` shuffles a user file that has no split column."""
    if source.preset and source.data:
        raise DomainLMError("give either --task (a preset) or --data (your own file), not both")
    if source.preset:
        return _preset(source)
    if not source.data:
        raise DomainLMError(
            "say what to train on: --task PRESET, or --data FILE with --template and --label-column"
        )
    return _user_task(source, seed)


def _preset(source: TaskSource) -> tuple[TaskSpec, TaskData]:
    spec = get_task(source.preset)
    if source.template:
        spec = dataclasses.replace(spec, template=source.template)
    options = dict(source.task_options)
    for key in ("limit_train", "limit_eval"):
        if getattr(source, key) is not None:
            options[key] = getattr(source, key)
    if source.skip_invalid:
        options["skip_invalid"] = True
    # No data directory: the loader falls back to $DOMAINLM_DATA, or needs none (dta with dataset=PATH).
    return spec, spec.load(Path(source.data_dir) if source.data_dir else None, **options)


def _user_task(source: TaskSource, seed: int) -> tuple[TaskSpec, TaskData]:
    from domainlm.tasks.table import load_table_task

    for key in ("template", "label_column"):
        if not getattr(source, key):
            raise DomainLMError(f"a user task needs --{key.replace('_', '-')}")
    data = load_table_task(
        source.data,
        source.template,
        source.label_column,
        head=source.head,
        n_classes=source.n_classes,
        id_column=source.id_column,
        split_column=source.split_column,
        seed=seed,
        skip_invalid=source.skip_invalid,
    )
    if source.limit_train is not None:
        data.train = data.train[: source.limit_train]
    if source.limit_eval is not None:
        data.val, data.test = data.val[: source.limit_eval], data.test[: source.limit_eval]
    spec = TaskSpec(
        Path(source.data).stem,
        source.template,
        head=source.head,
        n_classes=len(data.info.get("classes", [])) or source.n_classes,
        metrics=METRICS_BY_HEAD[source.head],
        primary_metric="mse" if source.head == "regression" else "accuracy",
        char_level_tags=source.char_level,
    )
    return spec, data
