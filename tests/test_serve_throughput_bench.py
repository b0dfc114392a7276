"""benchmarks/serve_throughput.py end to end on a tiny model: a real `domainlm serve` child process, sampled
requests with a seed each (as `augment` sends), and the pure `generate_batch` ceiling."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_throughput.py"


def test_the_throughput_bench_serves_sampled_requests(model_dir, tmp_path):
    command = [sys.executable, BENCH, "--model", model_dir("llama"), "--concurrency", "1", "2"]
    command += ["--requests", "2", "--max-tokens", "3", "--temperature", "0.7", "--threads", "1"]
    done = subprocess.run([*map(str, command), "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "serve_throughput.json").read_text())
    assert report["temperature"] == 0.7 and [r["concurrency"] for r in report["served"]] == [1, 2]
    assert all(1 <= r["generate_calls"] <= r["requests"] == 2 for r in report["served"])
    assert [r["completion_tokens"] for r in report["pure_generate"]] == [
        3,
        6,
    ]  # random weights: no early stop
    assert "Sampled requests (temperature 0.7, a seed each)" in (tmp_path / "serve_throughput.md").read_text()
