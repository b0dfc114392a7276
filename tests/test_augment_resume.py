"""Kill -9 an augment run mid-way, rerun it, and check nothing received was lost or asked for twice."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from domainlm.augment import AugmentConfig, make_teacher, run_augment
from domainlm.qa import QAItem, load_qa_dir, write_qa_jsonl
from fake_openai import FakeTeacherServer

CONCURRENCY = 3
ITEMS = 12  # x 2 modes = 24 requests


def augment_command(url: str, data, out) -> list[str]:
    return [
        sys.executable, "-c", "from domainlm.cli import main; main()", "augment", "--mode", "combined",
        "--teacher", url, "--model", "fake-teacher", "--data", str(data), "--out", str(out),
        "--concurrency", str(CONCURRENCY), "--no-progress",
    ]  # fmt: skip


def outputs(out) -> dict[str, bytes]:
    return {
        name: (out / name).read_bytes()
        for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "rejects.jsonl")
    }


def test_kill_and_resume_loses_nothing(tmp_path):
    data = tmp_path / "data"
    items = [
        QAItem(f"q{k}", f"Is marker {k} raised in disease {k}?", f"Study {k}.", "yes", "It is.")
        for k in range(ITEMS)
    ]
    write_qa_jsonl(data / "train.jsonl", items)
    write_qa_jsonl(data / "dev.jsonl", [QAItem("d0", "Dev?", "c", "no")])
    write_qa_jsonl(data / "test.jsonl", [QAItem("t0", "Test?", "c", "maybe")])
    out, reference = tmp_path / "out", tmp_path / "reference"

    with FakeTeacherServer(latency=0.15) as server:
        process = subprocess.Popen(augment_command(server.url, data, out), stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while server.served < 8 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        time.sleep(0.5)  # let the server count any request that reached it just before the kill
        sent_before_kill = server.requests
        with sqlite3.connect(out / "cache.sqlite") as db:
            stored = db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
        assert not (out / "train.jsonl").exists()  # no half-made training set
        # of the 8 replies sent, all but those still in flight (at most CONCURRENCY) are stored
        assert stored >= 8 - CONCURRENCY
        assert sent_before_kill - stored <= CONCURRENCY  # at most the in-flight requests were lost

        resumed = subprocess.run(augment_command(server.url, data, out), capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        # the rerun asked only for the replies that were not stored
        assert server.requests - sent_before_kill == 2 * ITEMS - stored
        assert (
            json.loads((out / "manifest.json").read_text())["counts"]["requests_sent"] == 2 * ITEMS - stored
        )
        repeated = sum(count - 1 for count in server.counts.values())
        assert repeated == sent_before_kill - stored and len(server.counts) == 2 * ITEMS

        # a finished job reruns from the cache alone; a straight run elsewhere writes the same files
        splits, config = load_qa_dir(data), AugmentConfig("combined", "fake-teacher", concurrency=CONCURRENCY)
        again = run_augment(splits, make_teacher(server.url), config, out, show_progress=False)
        assert (
            again["counts"]["requests_sent"] == 0 and server.requests == sent_before_kill + 2 * ITEMS - stored
        )
        run_augment(splits, make_teacher(server.url), config, reference, show_progress=False)
    assert outputs(out) == outputs(reference)
    assert len(outputs(out)["train.jsonl"].splitlines()) == ITEMS * 3
