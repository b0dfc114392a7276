"""A progress bar on a terminal; elsewhere (CI logs, `make demo > log`) a log line every few percent instead,
so a long run is never silent and its log stays readable."""

from __future__ import annotations

import contextlib
import logging
import sys

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from domainlm import distributed

log = logging.getLogger("domainlm.progress")

LOG_LINES = 20  # lines a run logs instead of a bar: one every 5% of its steps


class _Bar:
    def __init__(self, progress: Progress | None, task, log=None, total: int = 0, description: str = ""):
        self._progress, self._task = progress, task
        self._log, self._total, self._description = log, total, description
        self._every = max(1, total // LOG_LINES)
        self._logged = 0  # lines logged so far: the next is due once `completed` reaches the next multiple

    def update(self, completed: int, **fields) -> None:
        info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, info=info)
        elif self._log is not None and (completed // self._every > self._logged or completed >= self._total):
            self._logged = completed // self._every
            self._log(f"{self._description}: {completed}/{self._total} {info}".rstrip())


# Padded positions a batch may hold, per row of its batch size. A long tail (a 2,000-character SMILES among
# 60-character ones) otherwise pads a whole batch to its longest member, and attention's cost grows with the
# square of that length: one such batch of 32 cost more than the other 15 together.
TOKENS_PER_ROW = 256


def batches_by_length(lengths: list[int], batch_size: int, description: str, max_tokens: int | None = None):
    """Batches of indices in order of length (little padding), at most `batch_size` rows and `max_tokens`
    padded positions each (default batch_size x TOKENS_PER_ROW; a longer input is a batch of its own),
    counted on a progress bar as they finish."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    budget = max_tokens or batch_size * TOKENS_PER_ROW
    batches, batch = [], []
    for i in order:  # ascending: the newest member is the longest, so rows x its length is the padded size
        if batch and (len(batch) == batch_size or (len(batch) + 1) * lengths[i] > budget):
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    with progress_bar(total=len(order), description=description, log=log.info) as bar:
        done = 0
        for batch in batches:
            yield batch
            done += len(batch)
            bar.update(done)


@contextlib.contextmanager
def progress_bar(total: int, description: str, completed: int = 0, log=None):
    """A bar on a terminal; otherwise, with `log`, a log line every 1/LOG_LINES of `total`. Of several
    processes training together only the main one shows progress."""
    if not distributed.is_main_process():
        yield _Bar(None, None)
        return
    if not sys.stderr.isatty():
        yield _Bar(None, None, log, total, description)
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
