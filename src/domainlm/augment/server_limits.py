"""What `domainlm serve` accepts: request limits, a body-size guard and a bounded generation queue.

The model runs one generation at a time, so without bounds one request (huge `n` or `max_tokens`) holds it
for hours and a burst of requests piles up in memory. Requests over a limit are refused before any
generation starts, each with an OpenAI-style error body so clients report (and, on 429, retry) correctly.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

from domainlm.errors import InputError


@dataclass(frozen=True)
class ServeLimits:
    max_n: int = 8  # completions per request
    max_tokens: int = 1024  # completion tokens per request (the context may allow fewer)
    default_max_tokens: int = 256  # when a request names none
    max_messages: int = 64
    max_body_bytes: int = 1 << 20  # 1 MiB
    max_queue: int = 16  # generations running or waiting; more get 429
    retry_after_s: int = 1  # what a 429 tells clients to wait

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise InputError(f"serve limit {name} must be a positive integer, got {value!r}")
        if self.default_max_tokens > self.max_tokens:
            object.__setattr__(self, "default_max_tokens", self.max_tokens)


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error shape; its client reads `message`, `type`, `code` and `param`."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class BodySizeLimit:
    """ASGI middleware: a body over `limit` bytes gets 413 before the app parses any of it. A declared
    Content-Length over the limit is refused unread; a body without one is read at most `limit` bytes."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD"}:
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._refuse(send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect as usual
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send):
        body = error_body(
            f"the request body exceeds {self.limit} bytes", "invalid_request_error", "request_too_large"
        )
        payload = json.dumps(body).encode()
        # No "connection: close": closing a socket with unread input resets it, and the client may lose
        # the 413 before reading it. Kept alive, uvicorn discards the rest of the body as it arrives.
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


class QueueFull(Exception):
    pass


class GenerationQueue:
    """Counts generations running or waiting for the model; taking a place when all `size` are held fails
    at once (the caller answers 429) instead of waiting without bound."""

    def __init__(self, size: int):
        self.size, self.held, self.peak = size, 0, 0
        self._lock = threading.Lock()

    def __enter__(self):
        with self._lock:
            if self.held >= self.size:
                raise QueueFull(f"{self.held} generations are running or waiting (the limit)")
            self.held += 1
            self.peak = max(self.peak, self.held)
        return self

    def __exit__(self, *exc):
        with self._lock:
            self.held -= 1
