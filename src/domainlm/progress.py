"""A progress bar that is quiet when not attached to a terminal (CI logs stay readable)."""

from __future__ import annotations

import contextlib
import sys

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._progress, self._task = progress, task

    def update(self, completed: int, **fields) -> None:
        if self._progress is not None:
            info = "  ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
            )
            self._progress.update(self._task, completed=completed, info=info)


def batches_by_length(lengths: list[int], batch_size: int, description: str):
    """Batches of indices in order of length (little padding), counted on a progress bar as they finish."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    with progress_bar(total=len(order), description=description) as bar:
        for s in range(0, len(order), batch_size):
            yield order[s : s + batch_size]
            bar.update(min(s + batch_size, len(order)))


@contextlib.contextmanager
def progress_bar(total: int, description: str, completed: int = 0):
    if not sys.stderr.isatty():
        yield _Bar(None, None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, completed=completed, info="")
        yield _Bar(progress, task)
