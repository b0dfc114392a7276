"""Ctrl-C and SIGTERM while training: the step under way finishes, a checkpoint is written, and the run stops
with a message saying how to continue (a second signal stops at once).

Under a launcher with several processes (torchrun, `accelerate launch`) a Ctrl-C reaches each process twice:
from the terminal and again from the launcher, which passes it on. A repeat within `LAUNCHER_REPEAT_S` is
then the same request; the launcher itself kills processes that take too long to stop."""

from __future__ import annotations

import contextlib
import signal
import threading
import time

from domainlm import distributed
from domainlm.errors import DomainLMError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
LAUNCHER_REPEAT_S = 2.0


class TrainingInterrupted(DomainLMError):
    """Training stopped on a signal, after writing its checkpoint."""


class StopRequest:
    signal: str | None = None  # the name of the signal received, once one is
    received_at: float = 0.0


@contextlib.contextmanager
def deferred_interrupts():
    """Within: SIGINT / SIGTERM only set the request's `signal`, for the loop to stop at a step boundary,
    where the state is whole. Signals can only be handled in the main thread; elsewhere nothing changes."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {}

    repeats_forwarded = distributed.launched()

    def defer(signum, frame):
        now = time.monotonic()
        if request.signal is not None:
            if repeats_forwarded and now - request.received_at < LAUNCHER_REPEAT_S:
                return  # the launcher passing the same Ctrl-C on
            raise KeyboardInterrupt  # asked twice: the user does not want to wait for the step
        request.signal, request.received_at = signal.Signals(signum).name, now

    for sig in SIGNALS:
        previous[sig] = signal.signal(sig, defer)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
