"""Two processes (gloo, on the CPU) train a tiny Llama's tags to the weights one process trains with the same
global batch, gather evaluation without losing or repeating the uneven tail, keep a span store each for the
spans of their own batches, and resume from their checkpoint.

Tolerance: weights within 1e-6 (absolute; they are ~1e-2) and losses within 1e-6 (relative). The two runs sum
the same gradients in another order, and the reused keys/values of a span are computed in other batches,
i.e. other padding, so they agree up to float rounding; a lost batch, a wrong share or a missed gradient sum
would be off by orders of magnitude more.

`accelerate launch --cpu` starts a single process (accelerate 1.x leaves multi-CPU runs to mpirun), so the
launch here is `--multi_gpu` on a machine with no visible GPU: torchrun's two processes, and domainlm's
`distributed` module opens their gloo group."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distributed_worker import N_VAL, train
from domainlm.errors import DomainLMError

WORKER = Path(__file__).with_name("distributed_worker.py")
CUT_AFTER = 3  # the last process's batches before SIGTERM: it stops after step 3 of 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*jobs: str) -> None:
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(free_port()), str(WORKER), *jobs, "--grad-accum", "1"),
    ]
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(
            f"accelerate launch failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-6000:]}"
        )


def results(directory: Path) -> list[dict]:
    return [torch.load(directory / f"result-{rank}.pt", weights_only=True) for rank in (0, 1)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    one = train(root / "one", grad_accum=2)  # one process, two batches a step: the same global batch
    launch(f"plain:{root / 'two'}", f"cut:{root / 'cut'}:{CUT_AFTER}")
    cut = results(root / "cut")
    shutil.copy(root / "cut" / "checkpoint.pt", root / "cut-checkpoint.pt")
    launch(f"resume:{root / 'cut'}")
    return {
        "one": one,
        "two": results(root / "two"),
        "cut": cut,
        "resumed": results(root / "cut"),
        "root": root,
    }


def assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_two_processes_train_the_weights_of_one_with_the_same_global_batch(runs):
    one, (main, other) = runs["one"], runs["two"]
    assert main["processes"] == 2 and one["processes"] == 1
    assert_same_weights(main["weights"], one["weights"])
    assert_same_weights(other["weights"], main["weights"])  # and both processes hold the same
    assert len(main["history"]) == len(one["history"]) == 6
    for got, expected in zip(main["history"], one["history"]):
        assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-6)
        assert got.get("val_mse") == pytest.approx(expected.get("val_mse"), rel=1e-6)


def test_evaluation_gathers_every_prediction_once_in_order(runs):
    one, (main, other) = runs["one"], runs["two"]
    assert (
        main["val_predictions"].shape[0] == N_VAL
    )  # 5 over 2 processes: the tail is neither lost nor doubled
    torch.testing.assert_close(main["val_predictions"], one["val_predictions"], rtol=0, atol=1e-6)
    torch.testing.assert_close(other["val_predictions"], main["val_predictions"], rtol=0, atol=0)


def test_each_process_computes_only_its_own_spans(runs):
    alone, shares = runs["one"]["spans_computed"], [r["spans_computed"] for r in runs["two"]]
    assert all(0 < n < alone for n in shares) and sum(shares) >= alone


def test_a_two_process_run_stopped_by_sigterm_on_one_process_resumes_to_the_same_weights(runs):
    assert all(r["stopped"] for r in runs["cut"])  # the signal reached one process; both stopped
    checkpoint = torch.load(runs["root"] / "cut-checkpoint.pt", weights_only=True)
    assert checkpoint["position"]["step"] == CUT_AFTER and checkpoint["processes"] == 2
    assert len(checkpoint["rng_per_process"]) == 2
    main, other = runs["resumed"]
    assert [h["step"] for h in main["history"]] == list(range(1, 7))
    assert_same_weights(main["weights"], runs["one"]["weights"])
    assert_same_weights(other["weights"], main["weights"])


def test_a_two_process_checkpoint_is_refused_by_one_process(runs, tmp_path):
    (tmp_path / "run").mkdir()
    shutil.copy(runs["root"] / "cut-checkpoint.pt", tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(DomainLMError, match="written by 2 process.*--num_processes 2"):
        train(tmp_path / "run", grad_accum=1, resume=True)


# ---- in-process: mixed precision, older checkpoints, a launcher's forwarded Ctrl-C ------------------------


def line_fit(**settings):
    from torch import nn

    from domainlm.training import LoopSettings, TrainableMethod, fit

    class Line(TrainableMethod):
        def __init__(self):
            torch.manual_seed(0)
            self.module, self.n_examples = nn.Linear(4, 1), 8

        def loss(self, batch):
            x = torch.arange(len(batch) * 4, dtype=torch.float32).reshape(len(batch), 4) / 10
            out = self.module(x)
            self.dtype = out.dtype
            return ((out - 1) ** 2).mean().float()

        def tokens(self, batch):
            return len(batch)

    method = Line()
    lines: list[str] = []
    loop = LoopSettings(**{"epochs": 1, "lr": 0.01, "batch_size": 2, **settings})
    result = fit(method, loop, log=lines.append)
    return method, result, lines


def test_mixed_precision_auto_keeps_the_cpu_in_float32_and_bf16_runs_there_when_asked():
    method, _, lines = line_fit()
    assert method.dtype == torch.float32 and "mixed precision" not in lines[0]
    method, result, lines = line_fit(mixed_precision="bf16")
    assert method.dtype == torch.bfloat16 and "mixed precision bf16" in lines[0]
    assert all(p.dtype == torch.float32 for p in method.module.parameters())  # the weights stay float32
    assert result.steps == 4 and all(h["train_loss"] is not None for h in result.history)


def test_fp16_on_the_cpu_and_unknown_precisions_are_refused_in_words():
    with pytest.raises(DomainLMError, match="fp16 needs a CUDA device"):
        line_fit(mixed_precision="fp16")
    with pytest.raises(DomainLMError, match="mixed_precision must be one of auto, no, bf16, fp16"):
        line_fit(mixed_precision="fp8")


def test_a_checkpoint_older_than_the_mixed_precision_setting_resumes(tmp_path):
    from domainlm.training import LoopSettings, fit

    method, _, _ = line_fit()
    checkpoint = tmp_path / "checkpoint.pt"
    loop = LoopSettings(epochs=1, lr=0.01, batch_size=2)
    fit(method, loop, checkpoint=checkpoint, log=lambda _: None)
    state = torch.load(checkpoint, weights_only=True)
    del state["settings"]["mixed_precision"], state["processes"]  # as an earlier domainlm wrote it
    torch.save(state, checkpoint)
    lines: list[str] = []
    fit(method, loop, checkpoint=checkpoint, resume=True, log=lines.append)
    assert any("resumed from" in m and "after step 4 of 4" in m for m in lines)


def test_under_a_launcher_a_forwarded_ctrl_c_is_the_same_request(monkeypatch):
    import signal

    from domainlm.interrupts import deferred_interrupts

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; no process group is needed here
    with deferred_interrupts() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the terminal's
        os.kill(os.getpid(), signal.SIGINT)  # the launcher's, passed on
    assert stop.signal == "SIGINT"
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():  # alone, a second Ctrl-C stops at once
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
