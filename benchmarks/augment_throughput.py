"""Augmentation throughput against the local fake teacher with a fixed latency: sequential vs concurrent.

The server runs in its own process (as a real teacher would, so it does not share this process's GIL); each
setting writes into a fresh output directory (empty cache), so every request really goes over loopback HTTP
through the openai client.

    python benchmarks/augment_throughput.py [--items 64] [--latency 0.2] [--concurrency 1 8 32]

Writes benchmarks/results/augment_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from domainlm import io
from domainlm.augment import AugmentConfig, make_teacher, run_augment
from domainlm.qa import QAItem, QASplits

# dev-only helpers (tiny models, a fake OpenAI server) live beside the tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

RESULTS = Path(__file__).parent / "results"


def items(count: int) -> list[QAItem]:
    return [
        QAItem(f"b{k}", f"Does exposure {k} raise risk {k}?", f"Cohort study {k}.", "yes", "It does.")
        for k in range(count)
    ]


@contextlib.contextmanager
def server_process(latency: float):
    """A FakeTeacherServer in a child process; yields its URL."""
    code = (
        "import sys, time; from fake_openai import FakeTeacherServer; "
        f"s = FakeTeacherServer(latency={latency}).start(); print(s.url, flush=True); time.sleep(1e6)"
    )
    env = {**os.environ, "PYTHONPATH": sys.path[0]}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        yield child.stdout.readline().strip()
    finally:
        child.kill()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64, help="training items (one rewrite request each)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server waits per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="settings to compare")
    args = parser.parse_args()

    splits = QASplits(items(args.items), items(1), items(1))
    rows = []
    with server_process(args.latency) as url, tempfile.TemporaryDirectory() as tmp:
        # warm-up (imports, first connection) so that the first timed setting pays no one-off costs
        run_augment(
            QASplits(items(1), items(1), items(1)),
            make_teacher(url),
            AugmentConfig("rewrite", "fake-teacher"),
            Path(tmp) / "warm-up",
            show_progress=False,
        )
        for concurrency in args.concurrency:
            config = AugmentConfig("rewrite", "fake-teacher", concurrency=concurrency)
            started = time.perf_counter()
            manifest = run_augment(
                splits, make_teacher(url), config, Path(tmp) / f"c{concurrency}", show_progress=False
            )
            seconds = time.perf_counter() - started
            assert manifest["counts"]["generated"] == {"rewrite": args.items}
            rows.append(
                {
                    "concurrency": concurrency,
                    "requests": manifest["counts"]["requests_sent"],
                    "retries": manifest["counts"]["retries"],
                    "seconds": round(seconds, 3),
                    "requests_per_second": round(manifest["counts"]["requests_sent"] / seconds, 2),
                    "ideal_seconds": round(args.items * args.latency / concurrency, 3),
                }
            )
            print(rows[-1])
    base = rows[0]
    for row in rows:
        row["speedup_vs_first"] = round(base["seconds"] / row["seconds"], 2)
    result = {
        "items": args.items,
        "latency_s": args.latency,
        "rows": rows,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # other work on the machine,
        },
        "command": "python benchmarks/augment_throughput.py "
        + " ".join(
            [
                f"--items {args.items}",
                f"--latency {args.latency}",
                "--concurrency",
                *map(str, args.concurrency),
            ]
        ),
    }
    io.write_json(RESULTS / "augment_throughput.json", result)
    lines = [
        f"# Augmentation throughput ({args.items} requests, {args.latency * 1000:.0f} ms injected latency)",
        "",
        f"Fake OpenAI-compatible teacher on 127.0.0.1, openai client, one run. `{result['command']}`",
        "",
        "| concurrency | requests | retries | seconds | requests/s | ideal seconds | speed-up vs concurrency "
        f"{base['concurrency']} |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['concurrency']} | {r['requests']} | {r['retries']} | {r['seconds']} | "
            f"{r['requests_per_second']} | {r['ideal_seconds']} | {r['speedup_vs_first']}x |"
            for r in rows
        ),
    ]
    io.write_text(RESULTS / "augment_throughput.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
