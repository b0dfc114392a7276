"""One tiny tag run for tests/test_distributed.py: run in-process (one process) or under
`accelerate launch` (several). Twelve SMILES, a regression tag on a tiny Llama with isolated, reused spans,
validation on five examples (an uneven tail for two processes) twice an epoch.

Every process writes `result-<rank>.pt` into OUT: the trained weights, the history, the validation
predictions it gathered, and what its span store computed.

    accelerate launch --multi_gpu --num_processes 2 distributed_worker.py plain:OUT cut:OUT2:3 --grad-accum 1
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

N_TRAIN, N_VAL = 12, 5


def molecules(n: int, seed: int) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    strings = ["".join(rng.choice("CNO") for _ in range(rng.randint(3, 9))) for _ in range(n)]
    return [(s, s.count("C") / len(s)) for s in strings]


def loop_settings(grad_accum: int):
    from domainlm.training import LoopSettings

    # Four batches of three an epoch: with two processes and grad_accum 1 an epoch is two steps.
    return LoopSettings(
        epochs=3, lr=2e-2, batch_size=3, grad_accum=grad_accum, warmup_ratio=0.2, evals_per_epoch=2
    )


def train(out: Path, grad_accum: int, resume: bool = False, stop_after_batches: int | None = None) -> dict:
    from domainlm import distributed
    from domainlm.engine.model import TaggedModel
    from domainlm.engine.tag_training import Split, TagMethod
    from domainlm.engine.template import Template
    from domainlm.tagruns import evaluate_split
    from domainlm.tasks.base import TaskSpec
    from domainlm.training import TrainConfig, fit
    from tiny_models import tiny_model

    torch.set_num_threads(1)
    model, tokenizer = tiny_model("llama")
    torch.manual_seed(0)
    tm = TaggedModel(model, tokenizer)
    tm.add_tag("SMILES", "domain", length=4, char_level=True)
    tm.add_tag("Y", "function", length=4, head="regression", label_mean=0.4, label_std=0.3)
    text = "The SMILES is <SMILES> {smiles}. Value <Y>"
    template, spec = Template(text), TaskSpec("toy", text, metrics=("mse",))

    def split(rows):
        return Split([template.render({"smiles": s}) for s, _ in rows], [y for _, y in rows])

    train_split, val_split = split(molecules(N_TRAIN, 0)), split(molecules(N_VAL, 1))
    method = TagMethod(tm, TrainConfig(), train_split, function_tag="Y", domain_tags=template.domain_tags)
    assert method.reuse, "the test means to cover the span store"

    if stop_after_batches is not None and distributed.process_index() == distributed.num_processes() - 1:
        # SIGTERM reaches the last process alone: every process must still stop after the same step.
        real_loss, calls = method.loss, {"n": 0}

        def loss(batch):
            calls["n"] += 1
            if calls["n"] == stop_after_batches:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_loss(batch)

        method.loss = loss

    def validate() -> dict:
        return evaluate_split(tm, val_split, spec, isolate=True, cache=method.cache)[0]

    out.mkdir(parents=True, exist_ok=True)
    stopped = False
    try:
        result = fit(
            method,
            loop_settings(grad_accum),
            validate=validate,
            checkpoint=out / "checkpoint.pt",
            resume=resume,
            log=lambda _: None,
        )
        history, best_step = result.history, result.best_step
    except Exception as e:
        from domainlm.interrupts import TrainingInterrupted

        if not isinstance(e, TrainingInterrupted):
            raise
        stopped, history, best_step = True, [], None
    predictions = evaluate_split(tm, val_split, spec, isolate=True, cache=method.cache)[1]
    record = {
        "stopped": stopped,
        "weights": {k: p.detach().clone() for k, p in tm.trainable_parameters().items()},
        "history": history,
        "best_step": best_step,
        "val_predictions": torch.as_tensor(predictions),
        "spans_computed": method.cache.stats.misses,
        "processes": distributed.num_processes(),
    }
    torch.save(record, out / f"result-{distributed.process_index()}.pt")
    return record


def main() -> None:
    """Jobs run one after the other in the same processes (one launch, one start-up): `plain:DIR`,
    `cut:DIR:N` (stop on SIGTERM after the last process's N-th batch) and `resume:DIR`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("jobs", nargs="+")
    parser.add_argument("--grad-accum", type=int, default=1)
    args = parser.parse_args()
    for job in args.jobs:
        mode, directory, *rest = job.split(":")
        stop = int(rest[0]) if mode == "cut" else None
        train(Path(directory), args.grad_accum, resume=mode == "resume", stop_after_batches=stop)


if __name__ == "__main__":
    main()
