"""`domainlm serve` refuses what would hold the model too long or fill memory, before generating: n,
max_tokens (capped and within the context), message count, body size (413 unread) and a bounded queue
(429 with Retry-After, which the openai client honours). Ends with a 60-request load test."""

import asyncio
import contextlib
import inspect
import socket
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from domainlm.augment.local_model import LocalChatModel
from domainlm.augment.server import create_app, serve
from domainlm.augment.server_limits import ServeLimits
from domainlm.errors import InputError
from serve_load import QUESTION, run_load

LIMITS = ServeLimits(max_n=2, max_tokens=16, max_messages=3, max_body_bytes=64 * 1024, max_queue=2)


@contextlib.contextmanager
def running(app):
    """`app` under uvicorn on a free loopback port; yields the /v1 base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


class Gated:
    """A chat model whose generations wait until `gate` opens: the queue fills deterministically."""

    def __init__(self, inner):
        self.inner, self.gate = inner, threading.Event()
        self.encode = inner.encode

    def generate_encoded(self, prompt, **kw):
        assert self.gate.wait(timeout=60)
        return self.inner.generate_encoded(prompt, **kw)


@pytest.fixture(scope="module")
def chat_model(model_dir):
    return LocalChatModel(model_dir("llama"), device="cpu")


@pytest.fixture(scope="module")
def server(chat_model):
    with running(create_app(chat_model, "tiny", limits=LIMITS)) as url:
        yield url


def post(url, body=None, **kw):
    return httpx.post(f"{url}/chat/completions", json=body, timeout=60, **kw)


def assert_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and error["type"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"n": 3}, "n"),
        ({"max_tokens": 17}, "max_tokens"),
        ({"max_completion_tokens": 17}, "max_tokens"),
        ({"messages": QUESTION * 4}, "messages"),
    ],
)
def test_requests_over_a_limit_are_refused_naming_the_parameter(server, extra, param):
    error = assert_error(post(server, {"model": "tiny", "messages": QUESTION, **extra}), 400, "invalid_value")
    assert error["param"] == param and "at most" in error["message"]


def test_requests_at_the_limits_are_answered(server):
    body = {"model": "tiny", "messages": QUESTION * 3, "n": 2, "max_tokens": 16, "seed": 0}
    response = post(server, body)
    assert response.status_code == 200 and len(response.json()["choices"]) == 2


def test_max_tokens_must_fit_in_the_context_the_prompt_leaves(server):
    long = [{"role": "user", "content": "the " * 2030}]  # ~2045 tokens of the 2048 the tiny model has
    error = assert_error(post(server, {"model": "tiny", "messages": long, "max_tokens": 16}), 400)
    assert error["code"] == "context_length_exceeded" and "max_tokens asks for 16" in error["message"]
    fitted = post(server, {"model": "tiny", "messages": long})  # no max_tokens: whatever room is left
    assert fitted.status_code == 200 and fitted.json()["usage"]["completion_tokens"] <= 16


def test_an_oversized_body_gets_413_before_it_is_parsed(server):
    big = b"{" + b"x" * (LIMITS.max_body_bytes + 1)  # not even JSON: a 400 would mean it was parsed
    declared = httpx.post(f"{server}/chat/completions", content=big, timeout=60)
    assert_error(declared, 413, "request_too_large")

    def chunks():  # no Content-Length: the server counts as it reads
        for _ in range(3):
            yield big[: LIMITS.max_body_bytes // 2]

    streamed = httpx.post(f"{server}/chat/completions", content=chunks(), timeout=60)
    assert_error(streamed, 413, "request_too_large")


@pytest.mark.parametrize(
    "content",
    [
        b'{"model": "tiny", "messages": [',
        b"[1, 2]",
        b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "seed": -1}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e9}',
    ],
)
def test_malformed_requests_get_an_openai_error_body(server, content):
    headers = {"content-type": "application/json"}
    assert_error(httpx.post(f"{server}/chat/completions", content=content, headers=headers), 400)


def test_unknown_routes_get_an_openai_error_body(server):
    assert_error(httpx.get(f"{server}/nowhere"), 404)
    assert_error(httpx.get(f"{server}/chat/completions"), 405)


def test_a_full_queue_answers_429_with_retry_after_and_the_openai_client_retries(chat_model):
    gated = Gated(chat_model)
    app = create_app(gated, "tiny", limits=LIMITS)
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 4}
    with running(app) as url:
        held = [threading.Thread(target=post, args=(url, body)) for _ in range(LIMITS.max_queue)]
        for t in held:
            t.start()
        deadline = time.monotonic() + 30
        while app.state.queue.held < LIMITS.max_queue and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = post(url, body)
        assert_error(busy, 429, "rate_limit_exceeded")
        assert busy.headers["retry-after"] == str(LIMITS.retry_after_s)

        seen = []

        def on_response(response):  # the first 429 opens the gate: the client's retry then succeeds
            seen.append(response.status_code)
            gated.gate.set()

        http = httpx.Client(event_hooks={"response": [on_response]})
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=3, http_client=http)
        answer = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4)
        assert seen[0] == 429 and seen[-1] == 200 and isinstance(answer.choices[0].message.content, str)
        for t in held:
            t.join(timeout=60)
        assert app.state.queue.held == 0 and app.state.queue.peak == LIMITS.max_queue


def test_limits_come_from_the_cli_and_the_default_binds_to_loopback(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from domainlm.augment import server as server_module
    from domainlm.cli import _register, app

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    seen = {}
    monkeypatch.setattr(server_module, "serve", lambda model, **kw: seen.update(kw))
    _register()
    args = ["serve", "--model", str(tmp_path), "--max-n", "3", "--max-tokens", "64", "--max-queue", "5"]
    res = CliRunner().invoke(app, [*args, "--max-body-bytes", "1000", "--max-messages", "7"])
    assert res.exit_code == 0, res.output
    assert seen["host"] == "127.0.0.1"
    assert seen["limits"] == ServeLimits(
        max_n=3, max_tokens=64, default_max_tokens=64, max_messages=7, max_body_bytes=1000, max_queue=5
    )
    res = CliRunner().invoke(app, ["serve", "--model", str(tmp_path), "--max-queue", "0"])
    assert res.exit_code != 0 and "max_queue must be a positive integer" in res.output
    with pytest.raises(InputError, match="max_n"):
        ServeLimits(max_n=0)


def test_a_burst_of_60_mixed_requests_is_answered_correctly_and_the_server_stays_up(chat_model):
    limits = ServeLimits(max_body_bytes=64 * 1024, max_queue=4)
    with running(create_app(chat_model, "tiny", limits=limits)) as url:
        report = asyncio.run(run_load(url, "tiny", limits, 2048, n_requests=60, openai_requests=6))
        summary = report.summary()
        assert summary["problems"] == [] and summary["openai_client"]["problems"] == []
        assert summary["requests"] == 60 and summary["accepted"] >= 1
        assert summary["openai_client"]["completed"] == 6
        assert all(summary["by_kind"][kind] for kind in summary["by_kind"])  # every kind was sent
        assert httpx.get(f"{url}/models").status_code == 200  # still up
