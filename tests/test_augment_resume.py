"""Kill -9 an augment run mid-way, rerun it, and check nothing received was lost or asked for twice.

No wall-clock races: the scripted teacher answers the first ANSWERED requests and then holds every later one
until the test has killed the client. With CONCURRENCY requests in flight the client can only have sent the
last of them after storing every earlier reply (a slot frees just before the reply is stored, with no await
between), so at the kill exactly ANSWERED replies are stored and CONCURRENCY requests are in flight.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading

from domainlm.augment import AugmentConfig, make_teacher, run_augment
from domainlm.qa import QAItem, load_qa_dir, write_qa_jsonl
from fake_openai import FakeResponse, FakeTeacherServer, paraphrase

CONCURRENCY = 3
ITEMS = 12  # x 2 modes = 24 requests
ANSWERED = 8  # replies the teacher gives before it holds requests
WAIT_S = 120  # only a safety net against a hung test; no assertion depends on timing


class GatedTeacher:
    """Answers the first ANSWERED requests; holds the later ones while `holding`, counting them."""

    def __init__(self):
        self.holding = True
        self.held = 0
        self.answered = 0
        self._changed = threading.Condition()
        self._release = threading.Event()

    def __call__(self, body: dict, attempt: int) -> FakeResponse:
        with self._changed:
            hold = self.holding and self.answered >= ANSWERED
            if hold:
                self.held += 1
                self._changed.notify_all()
            else:
                self.answered += 1
        if hold:
            self._release.wait()  # its client is gone by then; the answer goes nowhere
        return paraphrase(body)

    def wait_for_held(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.held >= count, timeout=WAIT_S)

    def open(self) -> None:
        with self._changed:
            self.holding = False
        self._release.set()


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

    gate = GatedTeacher()
    with FakeTeacherServer(gate) as server:
        process = subprocess.Popen(augment_command(server.url, data, out), stderr=subprocess.DEVNULL)
        try:
            assert gate.wait_for_held(CONCURRENCY), "the run never had its requests in flight"
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        finally:
            gate.open()
        assert process.returncode == -signal.SIGKILL
        sent_before_kill = server.requests
        with sqlite3.connect(out / "cache.sqlite") as db:
            stored = db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
        assert not (out / "train.jsonl").exists()  # no half-made training set
        # every reply received is stored; only the requests in flight were lost
        assert stored == ANSWERED and sent_before_kill == ANSWERED + CONCURRENCY

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
