"""Ctrl-C and SIGTERM while training: the step under way finishes, a checkpoint is written, and the run stops
with a message saying how to continue (a second signal stops at once)."""

from __future__ import annotations

import contextlib
import signal
import threading

from domainlm.errors import DomainLMError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(DomainLMError):
    """Training stopped on a signal, after writing its checkpoint."""


class StopRequest:
    signal: str | None = None  # the name of the signal received, once one is


@contextlib.contextmanager
def deferred_interrupts():
    """Within: SIGINT / SIGTERM only set the request's `signal`, for the loop to stop at a step boundary,
    where the state is whole. Signals can only be handled in the main thread; elsewhere nothing changes."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {}

    def defer(signum, frame):
        if request.signal is not None:  # asked twice: the user does not want to wait for the step
            raise KeyboardInterrupt
        request.signal = signal.Signals(signum).name

    for sig in SIGNALS:
        previous[sig] = signal.signal(sig, defer)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
