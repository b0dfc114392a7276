"""Several processes training one model (`accelerate launch`, `torchrun`): who this process is, its device,
the `Accelerator` that `training.fit` trains through, and the few collectives the rest of the package
needs (sharded evaluation, sums, one object from the main process).

A plain single process never starts a process group: every helper here then returns at once what one
process would compute, so single-process runs take exactly the code paths they always took.
"""

from __future__ import annotations

import atexit
import functools
import os
from collections.abc import Callable

import numpy as np
import torch

from domainlm.errors import DomainLMError

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


def launched() -> bool:
    """Started by a launcher with several processes (torchrun and `accelerate launch` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@functools.cache
def _state():
    """accelerate's process state, created once; the process group (gloo on CPU-only machines, where
    accelerate would otherwise not start one) is destroyed at exit, as gloo aborts otherwise."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if torch.distributed.is_initialized():
        atexit.register(_close)
    return state


def _close() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def num_processes() -> int:
    return _state().num_processes if launched() else 1


def process_index() -> int:
    return _state().process_index if launched() else 0


def is_main_process() -> bool:
    return process_index() == 0


def device() -> torch.device:
    """This process's device: its own GPU under a launcher (cuda:LOCAL_RANK), else what accelerate picks."""
    return _state().device


def resolve_mixed_precision(setting: str, on: torch.device) -> str:
    """`auto`: bf16 on a GPU that has it, fp16 on an older GPU, none (float32) on the CPU."""
    if setting not in MIXED_PRECISION:
        raise DomainLMError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {setting!r}")
    if setting == "auto":
        if on.type != "cuda":
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if setting == "fp16" and on.type != "cuda":
        raise DomainLMError(f"mixed_precision fp16 needs a CUDA device, the model is on {on}; use bf16 or no")
    return setting


def accelerator(mixed_precision: str):
    """An `accelerate.Accelerator` with this mixed precision ("no", "bf16" or "fp16"). accelerate keeps one
    precision per process; runs in one process that differ in it (a benchmark, the tests) each get theirs,
    the process group staying as it is."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    _state()
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state()
        GradientState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


# ---- collectives (each returns at once in a single process) --------------------------------------------


def shard(n: int) -> list[int]:
    """This process's items of 0 .. n-1: every num_processes-th, so shards differ in size by one at most."""
    return list(range(process_index(), n, num_processes()))


def gather_rows(compute: Callable[[list[int]], np.ndarray], n: int) -> np.ndarray:
    """`compute(indices)` gives one row per index; the rows of all n items, in order, each computed once by
    the process whose shard holds it (an uneven tail is neither dropped nor repeated)."""
    if not launched() or n == 0:
        return compute(list(range(n)))
    mine = shard(n)
    rows = compute(mine) if mine else None
    parts: list = [None] * num_processes()
    torch.distributed.all_gather_object(parts, (mine, rows))
    filled = [(idx, r) for idx, r in parts if idx]
    out = np.empty((n, *filled[0][1].shape[1:]), dtype=filled[0][1].dtype)
    for idx, r in filled:
        out[idx] = r
    return out


def sum_across(values: list[float]) -> list[float]:
    """Element-wise sums over all processes (float64)."""
    if not launched():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def from_main(obj):
    """The main process's `obj`, on every process."""
    if not launched():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0, device=device())
    return box[0]


def all_objects(obj) -> list:
    """Every process's `obj`, in process order."""
    if not launched():
        return [obj]
    out: list = [None] * num_processes()
    torch.distributed.all_gather_object(out, obj)
    return out
