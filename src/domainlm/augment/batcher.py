"""Dynamic batching for `domainlm serve`: requests that arrive together share one `generate` call.

A worker thread takes the first waiting request, keeps collecting for `window_ms` (or until `max_batch_size`
sequences are waiting), then runs what it has as one left-padded `generate` (cut to what fits the context),
greedy and sampled requests alike: each sampled row draws from its own seeded generator, so neighbours do not
change an answer. Each request gets its own completions, cut at its own `max_tokens`, with its own token
counts. On a CPU or GPU one batched forward costs little more than one sequence's, so concurrency turns into
throughput.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass

from domainlm.errors import InputError


@dataclass(frozen=True)
class BatchSettings:
    window_ms: float = 10.0  # how long the first request of a batch waits for company
    max_batch_size: int = 16  # sequences in one generate call (a request with n samples counts n); 1 = off

    def __post_init__(self):
        if not (isinstance(self.max_batch_size, int) and self.max_batch_size >= 1):
            raise InputError(f"max_batch_size must be a positive integer, got {self.max_batch_size!r}")
        if not self.window_ms >= 0:
            raise InputError(f"batch window must be >= 0 ms, got {self.window_ms!r}")


@dataclass
class _Request:
    prompt: object  # local_model.Prompt
    temperature: float
    top_p: float
    n: int
    seed: int | None
    future: Future

    @property
    def rows(self) -> int:
        return self.n if self.temperature > 0 else 1


class ClientGone(Exception):
    """The client of a waiting request disconnected; the request was not generated."""


_STOP = object()


class Batcher:
    """Runs generations on one worker thread. A model without `generate_batch` (anything with only
    `generate_encoded`) is served one request at a time."""

    def __init__(self, chat_model, settings: BatchSettings | None = None):
        self.model, self.settings = chat_model, settings or BatchSettings()
        # Sequences per generate call; a model that cannot batch takes one request at a time, unwaited.
        self.limit = self.settings.max_batch_size if hasattr(chat_model, "generate_batch") else 1
        self.calls = 0  # generate calls made
        self.sizes: Counter = Counter()  # requests per call -> how many calls
        self.abandoned = 0  # requests dropped unstarted: their clients had gone
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="domainlm-batcher", daemon=True)
        self._thread.start()

    def submit(self, prompt, *, temperature=1.0, top_p=1.0, n=1, seed=None) -> Future:
        future: Future = Future()
        self._queue.put(_Request(prompt, temperature, top_p, n, seed, future))
        return future

    async def generate(self, prompt, *, gone=None, poll_s: float = 0.5, **sampling):
        """The request's Generation. `gone`: an async callable, true once the client has disconnected (a
        client that timed out will send the request again); a request whose client is gone before its batch
        starts is dropped, not generated, and raises ClientGone."""
        future = self.submit(prompt, **sampling)
        waiting = asyncio.wrap_future(future)
        while gone is not None:
            done, _ = await asyncio.wait({waiting}, timeout=poll_s)
            if done:
                break
            if await gone():
                future.cancel()  # a no-op once its batch has started: then it finishes, unread
                waiting.cancel()
                raise ClientGone("the client disconnected before its generation started")
        return await waiting

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            waiting, stop = self._collect(first)
            # claim each request; one whose client went away meanwhile (cancelled) is dropped here
            started = [r for r in waiting if r.future.set_running_or_notify_cancel()]
            self.abandoned += len(waiting) - len(started)
            for batch in self._batches(started) if started else []:
                self._generate(batch)
            if stop:
                return

    def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        """The first request plus whatever arrives within the window, up to the batch size in sequences."""
        waiting, rows = [first], first.rows
        deadline = time.monotonic() + self.settings.window_ms / 1000
        while rows < self.limit:
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return waiting, True
            waiting.append(item)
            rows += item.rows
        return waiting, False

    def _batches(self, waiting: list[_Request]) -> list[list[_Request]]:
        """The requests in arrival order, cut to the batch size and to what fits the context once padded (the
        longest prompt plus the longest completion). Greedy and sampled requests, whatever their
        temperature, top_p or seed, share a batch: each row samples on its own (local_model.RowSampler)."""
        context = getattr(self.model, "context_length", None)
        chunks: list[list[_Request]] = [[]]
        for request in waiting:
            chunk = chunks[-1]
            candidate = [*chunk, request]
            too_many = sum(r.rows for r in candidate) > self.limit
            width = max(r.prompt.length for r in candidate) + max(r.prompt.max_tokens for r in candidate)
            if chunk and (too_many or (context is not None and width > context)):
                chunks.append([request])
            else:
                chunk.append(request)
        return chunks

    def _generate(self, batch: list[_Request]) -> None:
        self.calls += 1
        self.sizes[len(batch)] += 1
        try:
            if len(batch) == 1:
                r = batch[0]
                results = [
                    self.model.generate_encoded(
                        r.prompt, temperature=r.temperature, top_p=r.top_p, n=r.n, seed=r.seed
                    )
                ]
            else:
                results = self.model.generate_batch(
                    [r.prompt for r in batch],
                    n=[r.n for r in batch],
                    temperature=[r.temperature for r in batch],
                    top_p=[r.top_p for r in batch],
                    seed=[r.seed for r in batch],
                )
        except Exception as e:  # every request of the batch gets the error (the server answers 500)
            for r in batch:
                r.future.set_exception(e)
            return
        for r, result in zip(batch, results, strict=True):
            r.future.set_result(result)
