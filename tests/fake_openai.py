"""A scripted OpenAI-compatible server on 127.0.0.1, for tests and throughput benchmarks.

`respond(body, attempt)` decides each answer (a reply text, an HTTP error, a delay, or garbled bytes) from
the request body and how many times that exact body was requested before; the server counts requests per
body so tests can check which requests a client repeated.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FakeResponse:
    content: str | None = None  # the assistant message of a 200 answer
    status: int = 200
    delay: float = 0.0  # extra seconds before answering (a slow or hung teacher)
    raw: bytes | None = None  # sent as the body instead of a well-formed completion
    headers: dict = field(default_factory=dict)


def body_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def user_text(body: dict) -> str:
    return "\n".join(m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user")


def field_in_prompt(body: dict, name: str) -> str | None:
    """The rest of the first prompt line starting with `name:` (e.g. "Question"), if any."""
    match = re.search(rf"^{re.escape(name)}:\s*(.*)$", user_text(body), re.M)
    return match.group(1).strip() if match else None


def paraphrase(body: dict, attempt: int = 0) -> FakeResponse:
    """A valid reply for the packaged prompts: the question reworded per seed, the label kept. Three numbers
    drawn from a hash of the request make every reply its own (no near duplicate of another, by word
    Jaccard), however alike the test items' questions are; numbers are no content words, so the reply stays
    as grounded in its source as the question it repeats."""
    rewrite = field_in_prompt(body, "Question")
    question = rewrite or field_in_prompt(body, "Example question") or "the topic"
    label = field_in_prompt(body, "Final decision") or "yes"
    kind = "in other words" if rewrite else "a related question"
    tags = " ".join(str(int(body_key(body)[i : i + 4], 16)) for i in (0, 4, 8))
    reply = {
        "question": f"Variant {body.get('seed', 0)}, {kind} ({tags}): {question}",
        "answer": f"The context supports {label} for this question.",
        "label": label,
    }
    return FakeResponse(json.dumps(reply))


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 refuses bursts of concurrent connections
    daemon_threads = True


class FakeTeacherServer:
    def __init__(
        self,
        respond: Callable[[dict, int], FakeResponse] = paraphrase,
        *,
        latency: float = 0.0,
        models: tuple[str, ...] = ("fake-teacher",),
    ):
        self.respond, self.latency, self.models = respond, latency, models
        self.counts: Counter = Counter()  # requests per body
        self.served = 0  # 200 answers fully sent
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def requests(self) -> int:
        return sum(self.counts.values())

    def start(self) -> FakeTeacherServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeTeacherServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def answer(self, body: dict) -> tuple[int, bytes, dict]:
        with self._lock:
            attempt = self.counts[body_key(body)]
            self.counts[body_key(body)] += 1
        if body.get("model") not in self.models:
            error = {"message": f"The model `{body.get('model')}` does not exist", "code": "model_not_found"}
            return 404, json.dumps({"error": {**error, "type": "invalid_request_error"}}).encode(), {}
        response = self.respond(body, attempt)
        time.sleep(self.latency + response.delay)
        if response.raw is not None:
            return response.status, response.raw, response.headers
        if response.status != 200:
            error = {"error": {"message": f"scripted error {response.status}", "type": "server_error"}}
            return response.status, json.dumps(error).encode(), response.headers
        content = response.content or ""
        prompt_tokens = sum(len(m.get("content", "").split()) for m in body.get("messages", []))
        completion = {
            "id": f"chatcmpl-{attempt}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(content.split()),
                "total_tokens": prompt_tokens + len(content.split()),
            },
        }
        return 200, json.dumps(completion).encode(), response.headers


def _handler(server: FakeTeacherServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would hold the second

        def do_GET(self):  # noqa: N802 (http.server's naming)
            models = [{"id": m, "object": "model", "owned_by": "fake"} for m in server.models]
            self._send(200, json.dumps({"object": "list", "data": models}).encode(), {})

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            status, payload, headers = server.answer(body)
            if self._send(status, payload, headers) and status == 200:
                with server._lock:
                    server.served += 1

        def _send(self, status: int, payload: bytes, headers: dict) -> bool:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
                return True
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a scripted timeout)
                return False

        def log_message(self, *args):
            pass

    return Handler
