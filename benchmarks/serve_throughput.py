"""Throughput of `domainlm serve` with dynamic batching: completion tokens/s at several concurrencies against
the real server, beside pure batched `generate` at the same batch sizes (the ceiling batching can reach).

The server runs in its own process, started here with the given --model; each concurrency level sends
--requests distinct greedy chat requests (at least one per concurrent client) through the openai client,
after one warm-up request. Then the server is stopped and the same model is loaded in this process to time
`LocalChatModel.generate_batch` on batches of those prompts.

    python benchmarks/serve_throughput.py [--model smollm2-135m] [--concurrency 1 4 8 16] [--requests 16]
        [--max-tokens 32] [--batch-window-ms 10] [--max-batch-size 16] [--threads N]

Writes benchmarks/results/<model>/serve_throughput.json and .md (with the command that made them).
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
import time
from pathlib import Path

import httpx

from domainlm import io

RESULTS = Path(__file__).parent / "results"
TOPICS = [
    "statins lower the risk of stroke in the elderly", "vitamin D supplements prevent fractures",
    "laparoscopic surgery shortens the hospital stay", "smoking raises the risk of bladder cancer",
    "early mobilisation improves recovery after hip surgery", "aspirin reduces colorectal adenomas",
    "night shifts affect the metabolic syndrome", "music therapy reduces anxiety before surgery",
]  # fmt: skip


def question(k: int) -> list[dict]:
    topic = TOPICS[k % len(TOPICS)]
    text = (
        f"Question {k}: does the evidence show that {topic}? Answer yes, no or maybe, then explain briefly."
    )
    return [{"role": "user", "content": text}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(args, env, model_name: str = "bench", log: Path | None = None):
    """`domainlm serve` in a child process; yields its /v1 base URL once it answers. `args`: model,
    batch_window_ms, max_batch_size, concurrency (a list) and device. The server's log goes to `log` (a
    file, not a pipe nobody reads while it runs: a full pipe would stall the server)."""
    port = free_port()
    command = [
        sys.executable, "-m", "domainlm", "serve", "--model", args.model,
        "--model-name", model_name, "--port", str(port), "--batch-window-ms", str(args.batch_window_ms),
        "--max-batch-size", str(args.max_batch_size), "--max-queue", str(max(args.concurrency) + 1),
    ]  # fmt: skip
    if args.device:
        command += ["--device", args.device]
    if log is None:
        handle, name = tempfile.mkstemp(suffix=".log")
        os.close(handle)
        log = Path(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink:
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=sink, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        child.terminate()
        child.wait(timeout=60)


async def load(
    url: str, concurrency: int, requests: int, max_tokens: int, offset: int, temperature: float = 0.0
) -> dict:
    """`requests` chat requests, at most `concurrency` in flight, greedy or sampled with a seed each (as
    `augment` sends them); completion tokens/s over the wall."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600)
    gate = asyncio.Semaphore(concurrency)
    latencies, tokens = [], []

    async def one(k: int) -> None:
        async with gate:
            started = time.perf_counter()
            response = await client.chat.completions.create(
                model="bench",
                messages=question(offset + k),
                max_tokens=max_tokens,
                temperature=temperature,
                seed=offset + k,
            )
            latencies.append(time.perf_counter() - started)
            tokens.append(response.usage.completion_tokens)

    started = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(requests)))
    wall = time.perf_counter() - started
    await client.close()
    return {
        "concurrency": concurrency,
        "requests": requests,
        "completion_tokens": sum(tokens),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(sum(tokens) / wall, 2),
        "mean_latency_s": round(sum(latencies) / len(latencies), 3),
    }


def pure_generate(args) -> list[dict]:
    """`generate_batch` on batches of the same kind of prompts and sampling, in this process."""
    import torch

    from domainlm.augment.local_model import LocalChatModel

    if args.threads:
        torch.set_num_threads(args.threads)
    model = LocalChatModel(args.model, device=args.device)
    model.generate_batch([model.encode(question(0), 4)], temperature=0)  # warm-up
    rows = []
    for size in args.concurrency:
        prompts = [model.encode(question(1000 + k), args.max_tokens) for k in range(size)]
        started = time.perf_counter()
        results = model.generate_batch(prompts, temperature=args.temperature, seed=list(range(size)))
        wall = time.perf_counter() - started
        tokens = sum(r.completion_tokens for r in results)
        rows.append(
            {
                "batch_size": size,
                "completion_tokens": tokens,
                "wall_s": round(wall, 3),
                "tokens_per_s": round(tokens / wall, 2),
            }
        )
    return rows


def sampling(temperature: float) -> str:
    if not temperature:
        return "Greedy requests"
    return f"Sampled requests (temperature {temperature}, a seed each)"


def markdown(report: dict) -> str:
    base_served = report["served"][0]["tokens_per_s"]
    base_pure = report["pure_generate"][0]["tokens_per_s"]
    pure = {row["batch_size"]: row for row in report["pure_generate"]}
    lines = [
        f"# `domainlm serve` throughput with dynamic batching: {report['model']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}. {sampling(report.get('temperature', 0))}, "
        f"max_tokens {report['max_tokens']}, batch window "
        f"{report['batch_window_ms']} ms, max batch size {report['max_batch_size']}.",
        "",
        "| concurrency | requests | generate calls | completion tokens | wall s | served tokens/s "
        "| speed-up vs 1 | pure generate tokens/s at that batch size | speed-up vs batch 1 | served / pure |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["served"]:
        p = pure.get(row["concurrency"])
        ceiling = p["tokens_per_s"] if p else None
        lines.append(
            f"| {row['concurrency']} | {row['requests']} | {row.get('generate_calls', '-')} | "
            f"{row['completion_tokens']} | {row['wall_s']} | "
            f"{row['tokens_per_s']} | {row['tokens_per_s'] / base_served:.2f}x | {ceiling or '-'} | "
            + (
                f"{ceiling / base_pure:.2f}x | {row['tokens_per_s'] / ceiling:.2f} |"
                if ceiling
                else "- | - |"
            )
        )
    lines += [
        "",
        "Served tokens/s include HTTP, JSON, tokenising, the batch window and requests that wait for a batch "
        "to finish; pure generate is one `generate_batch` call on the same kind of prompts. Greedy "
        "answers that stop early (end of sequence) count only the tokens made.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="any model `domainlm serve --model` takes")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument(
        "--requests", type=int, default=16, help="requests per level (at least the concurrency)"
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy; above: sampled, a seed per request"
    )
    parser.add_argument("--batch-window-ms", type=float, default=10.0)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for server and generate")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/<model>/")
    args = parser.parse_args()

    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    served = []
    with server_process(args, env) as url:
        asyncio.run(load(url, 1, 1, 4, offset=10_000))  # warm-up
        for k, level in enumerate(args.concurrency):
            before = httpx.get(f"{url[: -len('/v1')]}/stats").json()
            n = max(level, args.requests)
            row = asyncio.run(load(url, level, n, args.max_tokens, 100 * k, args.temperature))
            after = httpx.get(f"{url[: -len('/v1')]}/stats").json()
            row["generate_calls"] = after["generate_calls"] - before["generate_calls"]
            row["requests_per_call"] = round(row["requests"] / max(1, row["generate_calls"]), 2)
            print(row, flush=True)
            served.append(row)
    pure = pure_generate(args)
    for row in pure:
        print(row, flush=True)
    name = Path(args.model).name.removesuffix(".gguf")
    out = args.out or RESULTS / name
    report = {
        "model": args.model,
        "command": "python benchmarks/serve_throughput.py " + shlex.join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "batch_window_ms": args.batch_window_ms,
        "max_batch_size": args.max_batch_size,
        "threads": args.threads,
        "served": served,
        "pure_generate": pure,
    }
    io.write_json(out / "serve_throughput.json", report)
    (out / "serve_throughput.md").write_text(markdown(report), encoding="utf-8")
    print(f"wrote {out / 'serve_throughput.md'}")


if __name__ == "__main__":
    main()
