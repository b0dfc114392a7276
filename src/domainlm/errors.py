"""Errors a user can act on. The CLI prints them as one clear message and exits non-zero."""

from __future__ import annotations


class DomainLMError(Exception):
    """Base class for every error domainlm raises on purpose."""


class InputError(DomainLMError):
    """Bad input data or configuration, located as precisely as we can (file, line or item)."""

    def __init__(self, message: str, *, source: str | None = None, item: str | int | None = None):
        self.source = source
        self.item = item
        self.reason = message  # the problem without its location, e.g. for a column of reasons
        parts = []
        if source is not None:
            parts.append(str(source))
        if item is not None:
            parts.append(item if isinstance(item, str) else f"row {item}")
        where = ", ".join(parts) + ": " if parts else ""
        super().__init__(f"{where}{message}")


class IncompatibleTagsError(DomainLMError):
    """A tag library was made for another base model or hidden size."""
