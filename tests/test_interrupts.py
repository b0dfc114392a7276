"""Ctrl-C / SIGTERM during `fit`: the step finishes, a checkpoint is written, and --resume says where it
continues; without a checkpoint, --resume says so rather than restarting silently. Non-terminal output gets
progress lines."""

import os
import signal

import pytest
import torch
from torch import nn

from domainlm.interrupts import TrainingInterrupted
from domainlm.training import LoopSettings, TrainableMethod, fit


class Line(TrainableMethod):
    """y = 2x on 8 points; sends itself `signum` during the `at`-th batch."""

    def __init__(self, signum=None, at=0):
        torch.manual_seed(0)
        self.module, self.n_examples = nn.Linear(1, 1), 8
        self.signum, self.at, self.calls = signum, at, 0

    def loss(self, batch):
        self.calls += 1
        if self.signum is not None and self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        x = torch.tensor([[float(i)] for i in batch])
        return ((self.module(x) - 2 * x) ** 2).mean()

    def tokens(self, batch):
        return len(batch)


SETTINGS = LoopSettings(epochs=2, lr=0.01, batch_size=2)  # 4 steps an epoch, no interval checkpoints


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_the_step_and_resume_continues_after_it(tmp_path, signum):
    # what was there before (a shell that starts jobs in the background hands them SIGINT ignored)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    full = Line()
    fit(full, SETTINGS, log=lambda m: None)
    checkpoint, lines = tmp_path / "checkpoint.pt", []
    with pytest.raises(TrainingInterrupted, match="after step 3 of 8.*--resume"):
        fit(Line(signum, at=3), SETTINGS, checkpoint=checkpoint, log=lines.append)
    assert checkpoint.exists()
    resumed = Line()
    result = fit(resumed, SETTINGS, checkpoint=checkpoint, resume=True, log=lines.append)
    assert any("resumed from" in m and "after step 3 of 8" in m for m in lines)
    assert result.steps == 8 and resumed.calls == 5
    for a, b in zip(full.module.parameters(), resumed.module.parameters()):
        torch.testing.assert_close(a, b)
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored


def test_resume_without_a_checkpoint_says_so(tmp_path):
    lines = []
    fit(Line(), SETTINGS, checkpoint=tmp_path / "none.pt", resume=True, log=lines.append)
    assert any("no checkpoint at" in m and "starts from step 0" in m for m in lines)


def test_output_that_is_not_a_terminal_gets_progress_lines(tmp_path):
    lines = []
    fit(Line(), SETTINGS, log=lines.append)  # pytest captures stderr: not a terminal
    progress = [m for m in lines if m.startswith("training: ")]
    assert [m.split()[1] for m in progress] == [f"{k}/8" for k in range(1, 9)]
