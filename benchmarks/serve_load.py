"""Load test of `domainlm serve` on loopback: bursts of concurrent requests, valid and abusive mixed.

The server runs as its own process (`domainlm serve`, default limits unless flags say otherwise) on a tiny
random model, or on `--model NAME` (anything the backbone resolves). Each round fires `--requests` raw HTTP
requests at once (valid, malformed JSON, over-long prompts, oversized bodies, too-large n / max_tokens, too
many messages; see tests/serve_load.py) beside `--openai-requests` through the openai client with retries
on. Every answer is checked (a valid completion, or an OpenAI error body with the status its kind
deserves); the server's resident memory is sampled throughout. Stops by itself after `--rounds` rounds.

    python benchmarks/serve_load.py [--requests 300] [--openai-requests 30] [--rounds 2] [--model NAME]

Writes benchmarks/results/serve_load.json and .md; exits non-zero if any answer was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from domainlm import backbone, io
from domainlm.augment.server_limits import ServeLimits

# dev-only helpers (tiny models, the load client) live beside the tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_load import MIX, run_load  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODEL_NAME = "served"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_kb(pid: int, field: str) -> int:
    """A /proc/PID/status figure in kB (VmRSS: resident now, VmHWM: the peak since the process started)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


class RssSampler:
    """The largest VmRSS seen while running, sampled every `every` seconds in a thread."""

    def __init__(self, pid: int, every: float = 0.02):
        self.pid, self.every, self.peak_kb = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.peak_kb = max(self.peak_kb, _proc_kb(self.pid, "VmRSS"))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def server_process(model: str, port: int, limits: ServeLimits):
    """`domainlm serve` as a child process; yields (its /v1 URL, its pid) once it answers."""
    flags = {
        "--max-n": limits.max_n,
        "--max-tokens": limits.max_tokens,
        "--max-messages": limits.max_messages,
        "--max-body-bytes": limits.max_body_bytes,
        "--max-queue": limits.max_queue,
    }
    command = [str(Path(sys.executable).parent / "domainlm"), "serve", "--model", model, "--port", str(port)]
    command += ["--model-name", MODEL_NAME, "--device", "cpu", *(str(x) for kv in flags.items() for x in kv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            if child.poll() is not None:
                raise RuntimeError(f"domainlm serve exited: {child.stderr.read()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("domainlm serve did not start within 300 s")
            time.sleep(0.2)
        yield url, child.pid
    finally:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def tiny_model_dir(root: Path) -> str:
    from tiny_models import tiny_model

    model, tokenizer = tiny_model("llama")
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)


def context_of(model: str) -> int:
    positions = backbone.declared_positions(backbone.load_config(backbone.resolve(model)))
    return positions or 2048


def markdown(result: dict) -> str:
    lines = [
        f"# `domainlm serve` under load ({result['requests_per_round']} requests at once, "
        f"{result['rounds']} rounds)",
        "",
        f"`{result['command']}`",
        "",
        f"Model: {result['model']} (context {result['context']} tokens), served by `domainlm serve` in its "
        f"own process on 127.0.0.1 (CPU, OMP_NUM_THREADS=1), limits: {result['limits']}. Each round sends "
        f"the raw HTTP requests at once (mix per 20: {result['mix']}) beside "
        f"{result['openai_requests_per_round']} requests through the openai client (max_retries "
        f"{result['max_retries']}). {result['machine']}.",
        "",
        "| round | requests | accepted | rejected by reason | p50 s | p99 s | openai client: completed "
        "/ sent (429s retried) | peak RSS MiB | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(result["round_results"], start=1):
        reasons = ", ".join(f"{k}: {v}" for k, v in r["rejected_by_reason"].items())
        client = r["openai_client"]
        lines.append(
            f"| {i} | {r['requests']} | {r['accepted']} | {reasons} | {r['latency_p50_s']} | "
            f"{r['latency_p99_s']} | {client['completed']} / {client['requests']} ({client['retried_429s']}) "
            f"| {r['peak_rss_mib']} | {r['seconds']} |"
        )
    lines += [
        "",
        f"Server RSS: {result['rss_idle_mib']} MiB idle before the first round, peak {result['rss_hwm_mib']} "
        f"MiB (VmHWM, whole life), {result['rss_after_mib']} MiB after the last round. Answers checked: "
        f"{result['checked']}; wrong answers: {len(result['problems'])}. Server up after the rounds: "
        f"{result['server_up_after']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="raw HTTP requests per round, all at once")
    parser.add_argument("--openai-requests", type=int, default=30, help="openai-client requests per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-retries", type=int, default=10, help="the openai client's retries")
    parser.add_argument("--max-queue", type=int, default=ServeLimits().max_queue)
    parser.add_argument("--model", default=None, help="model to serve (default: a tiny random llama)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    limits = ServeLimits(max_queue=args.max_queue)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_model_dir(Path(tmp) / "tiny-llama")
        context = context_of(model)
        rounds, problems = [], []
        with server_process(model, _free_port(), limits) as (url, pid):
            idle_kb = _proc_kb(pid, "VmRSS")
            for _ in range(args.rounds):
                with RssSampler(pid) as rss:
                    report = asyncio.run(
                        run_load(
                            url,
                            MODEL_NAME,
                            limits,
                            context,
                            args.requests,
                            args.openai_requests,
                            args.max_retries,
                        )
                    )
                summary = report.summary()
                summary["peak_rss_mib"] = round(rss.peak_kb / 1024, 1)
                problems += summary["problems"] + summary["openai_client"]["problems"]
                rounds.append(summary)
            up = httpx.get(f"{url}/models", timeout=10).status_code == 200
            hwm_kb, after_kb = _proc_kb(pid, "VmHWM"), _proc_kb(pid, "VmRSS")

    result = {
        "command": shlex.join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]),
        "model": args.model or "tiny random llama (tests/tiny_models.py)",
        "context": context,
        "limits": {k: v for k, v in vars(limits).items()},
        "mix": MIX,
        "rounds": args.rounds,
        "requests_per_round": args.requests,
        "openai_requests_per_round": args.openai_requests,
        "max_retries": args.max_retries,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "round_results": rounds,
        "checked": sum(r["requests"] + r["openai_client"]["requests"] for r in rounds),
        "problems": problems,
        "server_up_after": up,
        "rss_idle_mib": round(idle_kb / 1024, 1),
        "rss_hwm_mib": round(hwm_kb / 1024, 1),
        "rss_after_mib": round(after_kb / 1024, 1),
    }
    io.write_json(args.out / "serve_load.json", result)
    io.write_text(args.out / "serve_load.md", markdown(result))
    print(markdown(result))
    if problems or not up:
        sys.exit(f"{len(problems)} wrong answer(s); server up: {up}")


if __name__ == "__main__":
    main()
