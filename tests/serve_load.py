"""A burst of concurrent requests against `domainlm serve`, valid and abusive mixed, each answer checked.

Shared by tests/test_serve_limits.py (60 requests) and benchmarks/serve_load.py (a few hundred). Every
200 must be a well-formed completion with as many choices as asked for; every refusal an OpenAI error body
with the status its kind deserves (429s with `Retry-After`). Some valid requests go through the openai
client with retries on, to show that it backs off on 429 and gets its completion in the end.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import openai

from domainlm.augment.server_limits import ServeLimits

QUESTION = [{"role": "user", "content": "is the answer yes or no"}]


def _json(body: dict) -> bytes:
    return json.dumps(body).encode()


def request_kinds(model: str, limits: ServeLimits, context: int) -> dict[str, tuple[bytes, set[int]]]:
    """kind -> (request body, statuses it may get). Valid requests may be turned away while the queue is
    full; every other kind is refused before it could reach the queue."""
    ok = {"model": model, "messages": QUESTION, "max_tokens": 8}
    return {
        "valid": (_json(ok), {200, 429}),
        "valid_n2": (_json({**ok, "n": 2, "seed": 1}), {200, 429}),
        "malformed_json": (b'{"model": "' + model.encode() + b'", "messages": [', {400}),
        "not_an_object": (b"[1, 2, 3]", {400}),
        "over_long_prompt": (
            _json({**ok, "messages": [{"role": "user", "content": "the " * context}]}),
            {400},
        ),
        "too_large_n": (_json({**ok, "n": limits.max_n + 1}), {400}),
        "too_large_max_tokens": (_json({**ok, "max_tokens": limits.max_tokens + 1}), {400}),
        "too_many_messages": (_json({**ok, "messages": QUESTION * (limits.max_messages + 1)}), {400}),
        "oversized_body": (_json({**ok, "pad": "x" * (limits.max_body_bytes + 1)}), {413}),
    }


# How many of each kind in every 20 requests: mostly valid, every abuse present.
MIX = {
    "valid": 8,
    "valid_n2": 2,
    "malformed_json": 2,
    "not_an_object": 1,
    "over_long_prompt": 2,
    "too_large_n": 1,
    "too_large_max_tokens": 1,
    "too_many_messages": 1,
    "oversized_body": 2,
}


def planned(n_requests: int) -> list[str]:
    """The kinds of `n_requests` requests, interleaved so that each burst holds every kind."""
    cycle = [kind for kind, count in MIX.items() for _ in range(count)]
    stride = 7  # coprime to len(cycle) == 20: consecutive requests differ in kind
    return [cycle[(i * stride) % len(cycle)] for i in range(n_requests)]


@dataclass
class Outcome:
    kind: str
    status: int
    seconds: float
    reason: str  # "ok", or "<status> <error code or type>"
    problem: str | None = None  # what is wrong with the answer, if anything


@dataclass
class LoadReport:
    outcomes: list[Outcome] = field(default_factory=list)
    client_requests: int = 0  # through the openai client, retries on
    client_completed: int = 0
    client_429s: int = 0  # answers the client retried after
    client_problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        latencies = sorted(o.seconds for o in self.outcomes)
        accepted = [o for o in self.outcomes if o.status == 200]
        return {
            "requests": len(self.outcomes),
            "accepted": len(accepted),
            "rejected": len(self.outcomes) - len(accepted),
            "rejected_by_reason": dict(
                sorted(Counter(o.reason for o in self.outcomes if o.status != 200).items())
            ),
            "by_kind": {k: dict(Counter(o.reason for o in self.outcomes if o.kind == k)) for k in MIX},
            "latency_p50_s": round(_quantile(latencies, 0.50), 4),
            "latency_p99_s": round(_quantile(latencies, 0.99), 4),
            "latency_accepted_p50_s": round(_quantile(sorted(o.seconds for o in accepted), 0.5), 4),
            "problems": [f"{o.kind}: {o.problem}" for o in self.outcomes if o.problem],
            "openai_client": {
                "requests": self.client_requests,
                "completed": self.client_completed,
                "retried_429s": self.client_429s,
                "problems": self.client_problems,
            },
            "seconds": round(self.seconds, 2),
        }


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[round(q * 100) - 1]


def check_answer(kind: str, expected: set[int], n: int, response: httpx.Response) -> tuple[str, str | None]:
    """(reason, problem): problem is None when the answer is what its kind deserves."""
    try:
        body = response.json()
    except ValueError:
        return (
            f"{response.status_code} not-json",
            f"status {response.status_code} with a body that is no JSON",
        )
    if response.status_code == 200:
        choices = body.get("choices")
        valid = (
            body.get("object") == "chat.completion"
            and isinstance(choices, list)
            and len(choices) == n
            and all(isinstance(c["message"]["content"], str) for c in choices)
            and all(c["finish_reason"] in {"stop", "length"} for c in choices)
            and isinstance(body.get("usage", {}).get("completion_tokens"), int)
        )
        problem = None if valid else f"not a valid completion with {n} choice(s): {body}"
        return "ok", problem if 200 in expected else f"accepted although it is {kind}"
    error = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(error, dict) and isinstance(error.get("message"), str) and error.get("type")):
        return f"{response.status_code} no-error-body", f"no OpenAI error body: {body}"
    reason = f"{response.status_code} {error.get('code') or error['type']}"
    if response.status_code not in expected:
        return reason, f"status {response.status_code}, expected one of {sorted(expected)}"
    if response.status_code == 429 and not response.headers.get("retry-after", "").isdigit():
        return reason, "429 without a Retry-After header in seconds"
    return reason, None


async def _fire_one(client: httpx.AsyncClient, url: str, kind: str, body: bytes, expected, n) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.post(url, content=body, headers={"content-type": "application/json"})
    except httpx.HTTPError as e:
        return Outcome(kind, 0, time.perf_counter() - started, "no answer", f"{type(e).__name__}: {e}")
    seconds = time.perf_counter() - started
    reason, problem = check_answer(kind, expected, n, response)
    return Outcome(kind, response.status_code, seconds, reason, problem)


async def _through_openai(base_url: str, model: str, report: LoadReport, count: int, max_retries: int):
    async def count_429(response: httpx.Response):
        if response.status_code == 429:
            report.client_429s += 1

    http = httpx.AsyncClient(event_hooks={"response": [count_429]}, timeout=120)
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="unused", max_retries=max_retries, http_client=http
    )

    async def one(i: int):
        report.client_requests += 1
        try:
            answer = await client.chat.completions.create(
                model=model, messages=QUESTION, max_tokens=4, seed=i
            )
        except openai.OpenAIError as e:
            report.client_problems.append(f"{type(e).__name__}: {e}")
            return
        if len(answer.choices) == 1 and isinstance(answer.choices[0].message.content, str):
            report.client_completed += 1
        else:
            report.client_problems.append(f"not a completion: {answer}")

    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        await client.close()


async def run_load(
    base_url: str,
    model: str,
    limits: ServeLimits,
    context: int,
    n_requests: int,
    openai_requests: int = 0,
    max_retries: int = 10,
) -> LoadReport:
    """All `n_requests` at once over raw HTTP, beside `openai_requests` through the openai client."""
    kinds = request_kinds(model, limits, context)
    url = f"{base_url}/chat/completions"
    report = LoadReport()
    pool = httpx.Limits(max_connections=n_requests, max_keepalive_connections=0)
    started = time.perf_counter()
    async with httpx.AsyncClient(limits=pool, timeout=300) as client:
        burst = [
            _fire_one(client, url, kind, kinds[kind][0], kinds[kind][1], 2 if kind == "valid_n2" else 1)
            for kind in planned(n_requests)
        ]
        retried = _through_openai(base_url, model, report, openai_requests, max_retries)
        report.outcomes, _ = await asyncio.gather(asyncio.gather(*burst), retried)
    report.seconds = time.perf_counter() - started
    return report
