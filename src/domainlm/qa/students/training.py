"""One training loop for every student: AdamW over the trainable weights, linear warm-up and decay, gradient
accumulation, a dev loss each epoch, and checkpoints that `--resume` continues from exactly."""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from domainlm import io
from domainlm.errors import DomainLMError

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"


@dataclass
class TrainState:
    epoch: int = 0  # epochs finished
    batches_done: int = 0  # forward passes of the current epoch already applied
    step: int = 0  # optimizer steps
    history: list[dict] = field(default_factory=list)


class Checkpoints:
    """`checkpoints/step-N/` holds adapter + optimizer + RNG state; `latest.json` names the newest complete
    one and is written last, so a kill at any moment leaves a usable checkpoint."""

    def __init__(self, run_path: Path):
        self.root = Path(run_path) / CHECKPOINTS

    def latest(self) -> Path | None:
        import json

        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        return self.root / json.loads(pointer.read_text())["dir"]

    def save(self, student, optimizer, scheduler, state: TrainState) -> None:
        name = f"step-{state.step:06d}"
        target = self.root / name
        if target.exists():
            shutil.rmtree(target)
        student.save(target)
        with io.atomic_path(target / "trainer.pt") as tmp:
            torch.save(
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "state": asdict(state),
                    "rng": torch.get_rng_state(),
                },
                tmp,
            )
        io.write_json(self.root / LATEST, {"dir": name, "step": state.step, "epoch": state.epoch})
        for old in self.root.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old)

    def restore(self, student, optimizer, scheduler) -> TrainState:
        directory = self.latest()
        if directory is None:
            raise DomainLMError(f"nothing to resume: no checkpoint under {self.root}")
        student.load_weights(directory)
        saved = torch.load(directory / "trainer.pt", weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        return TrainState(**saved["state"])


def train(
    student,
    train_features: list[dict],
    dev_features: list[dict],
    config,
    run,
    *,
    resume: bool = False,
    stop_after_steps: int | None = None,
) -> TrainState:
    """Train `student` in place. `stop_after_steps` interrupts the run (as a kill would) after that many
    optimizer steps of this call, right after a checkpoint; tests use it to check that resuming changes
    nothing."""
    from transformers import get_linear_schedule_with_warmup

    params = student.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    batches_per_epoch = math.ceil(len(train_features) / config.batch_size)
    total_steps = math.ceil(batches_per_epoch / config.grad_accum) * config.epochs
    scheduler = get_linear_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps
    )
    checkpoints = Checkpoints(run.path)
    state = TrainState()
    if resume and checkpoints.latest() is not None:
        state = checkpoints.restore(student, optimizer, scheduler)
        run.log(f"resumed at epoch {state.epoch}, step {state.step}")
    steps_this_call = 0
    for epoch in range(state.epoch, config.epochs):
        order = torch.randperm(
            len(train_features), generator=torch.Generator().manual_seed(config.seed + epoch)
        )
        batches = [order[i : i + config.batch_size].tolist() for i in range(0, len(order), config.batch_size)]
        student.model.train()
        losses = []
        bar = tqdm(
            range(state.batches_done, len(batches)), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False
        )
        for b in bar:
            group_start = b - b % config.grad_accum
            group_size = min(config.grad_accum, len(batches) - group_start)
            loss = student.loss(student.collate([train_features[i] for i in batches[b]]))
            (loss / group_size).backward()
            losses.append(loss.item())
            if b + 1 - group_start < group_size:
                continue
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batches_done = b + 1
            state.history.append(
                {
                    "step": state.step,
                    "epoch": round(epoch + (b + 1) / len(batches), 4),
                    "train_loss": sum(losses) / len(losses),
                    "lr": scheduler.get_last_lr()[0],
                }
            )
            bar.set_postfix(loss=f"{state.history[-1]['train_loss']:.4f}")
            losses = []
            steps_this_call += 1
            if config.save_every and state.step % config.save_every == 0:
                checkpoints.save(student, optimizer, scheduler, state)
            if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                checkpoints.save(student, optimizer, scheduler, state)
                raise TrainingInterrupted(f"stopped after {steps_this_call} step(s)")
        state.history[-1]["val_loss"] = mean_loss(student, dev_features, config.eval_batch_size)
        state.epoch, state.batches_done = epoch + 1, 0
        run.log(
            f"epoch {state.epoch}: step {state.step}, train loss {state.history[-1]['train_loss']:.4f}, "
            f"dev loss {state.history[-1]['val_loss']:.4f}"
        )
        checkpoints.save(student, optimizer, scheduler, state)
    return state


class TrainingInterrupted(DomainLMError):
    """Raised by `train(stop_after_steps=...)`."""


@torch.no_grad()
def mean_loss(student, features: list[dict], batch_size: int) -> float | None:
    """Example-weighted mean loss over `features` (teacher-forced for generative students)."""
    if not features:
        return None
    student.model.eval()
    total = 0.0
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size]
        total += student.loss(student.collate(chunk)).item() * len(chunk)
    student.model.train()
    return total / len(features)
