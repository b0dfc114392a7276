"""The one training loop. A method says what trains and what its loss is (`TrainableMethod`: tags in
`engine.tag_training`, the PEFT baselines in `baselines.peft_heads`, the QA students in
`qa.students.trainable`); `fit` does the rest, with one policy for each of:

* optimisation: AdamW over the trainable parameters, warm-up then decay (`schedule`), gradient accumulation
  (a step's loss is the mean over its batches; an epoch's last group may hold fewer), gradient clipping to
  `max_grad_norm` (None: none);
* selection: `validate()` runs `evals_per_epoch` times an epoch and after the last step; when training ends
  the trainable weights at the best value of its `select` metric are restored (the metric's direction comes
  from `domainlm.metrics`, its one home);
* non-finite losses: a batch whose loss is NaN or infinite is skipped (no gradient) and a step whose gradient
  norm is not finite is not applied; both count in the step's history row (`skipped_batches`) and are logged;
  `NONFINITE_LIMIT` skipped batches in a row raise a `DomainLMError`, as the run has diverged;
* checkpoints: every `checkpoint_every` steps, at each epoch's end, after the last step and when Ctrl-C or
  SIGTERM stops the run (at the end of the step under way: `interrupts`), one file written atomically,
  holding only tensors and plain values (loaded with `weights_only=True`): trainable weights,
  optimizer, schedule, random states, position, history and best state. Resuming from it continues exactly
  as the uninterrupted run would have;
* progress: a progress bar on a terminal (elsewhere a log line every 5% of the steps), and a log line at each
  validation; `resume` says which step it continues after, or that there is no checkpoint to continue;
* devices and processes: training runs through an `accelerate.Accelerator` (`domainlm.distributed`), with
  `mixed_precision` (auto: bf16 on a GPU that has it, fp16 on an older one, float32 on the CPU) and, under
  `accelerate launch` / `torchrun`, several processes (below).

Several processes (data parallel). `batch_size` is each process's; an optimizer step takes
`grad_accum x processes` of the epoch's batches (the same list on every process, a function of the seed),
the process of rank r running every processes-th of them. After the step's backward passes the gradients of
the trainable weights alone are summed across processes (one all-reduce; the frozen base is never
synchronised), and every process applies the same step, so weights, optimizer and schedule stay identical
everywhere: one process with `grad_accum x processes` trains the same weights, up to float rounding. The
loss values, the non-finite flags of every batch and Ctrl-C / SIGTERM on any process are shared too, so all
processes skip, stop and checkpoint at the same step. This is what DDP does, written out: DDP's hooks would
miss the span-reuse forward (it does not go through `module.forward`), hang when one process skips a
non-finite batch or has no batch left at an epoch's uneven tail, and broadcast the whole frozen model at
start. Only the main process logs and writes the checkpoint (with every process's random state); a resumed
run reads it there and sends it to the others, and must use as many processes as the run that wrote it.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainlm import distributed, io
from domainlm.errors import DomainLMError
from domainlm.interrupts import TrainingInterrupted, deferred_interrupts
from domainlm.memory import check_batches
from domainlm.metrics import selection_value
from domainlm.progress import progress_bar

STAGES = ("domain", "function")
NONFINITE_LIMIT = 5  # skipped batches in a row that stop a run
CHECKPOINT = "checkpoint.pt"


@dataclass
class LoopSettings:
    """What the loop needs from a method's configuration (`TrainConfig.loop`, `StudentConfig.loop`)."""

    epochs: float
    lr: float
    batch_size: int
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    schedule: str = "linear"  # any transformers.get_scheduler name
    max_grad_norm: float | None = 1.0
    seed: int = 0
    evals_per_epoch: int = 1
    checkpoint_every: int = 0  # optimizer steps; 0: only at epoch ends
    # Validate once before the first step, so selection can keep the starting weights (a probe-fitted head).
    validate_at_start: bool = False
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16 (auto: bf16/fp16 on a GPU, float32 on the CPU)

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "evals_per_epoch"):
            if getattr(self, name) < 1:
                raise DomainLMError(f"{name} must be >= 1")
        if not self.epochs > 0 or not self.lr > 0:
            raise DomainLMError("epochs and lr must be positive")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise DomainLMError(f"max_grad_norm must be positive (or None), got {self.max_grad_norm}")
        if self.checkpoint_every < 0:
            raise DomainLMError("checkpoint_every must be >= 0")
        if self.mixed_precision not in distributed.MIXED_PRECISION:
            raise DomainLMError(
                f"mixed_precision must be one of {', '.join(distributed.MIXED_PRECISION)}, "
                f"got {self.mixed_precision!r}"
            )


@dataclass
class TrainConfig:
    """Settings of a tag run; the PEFT baselines share the loop settings and dtype/device."""

    stage: str = "function"
    epochs: float = 2.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 4
    grad_accum: int = 8
    warmup_ratio: float = 0.03
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 0
    tag_length: int = 10
    # Words whose token embeddings start a new tag (tag name -> text, e.g. {"FR": "French"}); the other tags
    # start at the paper's mean embedding
    tag_init_text: dict[str, str] = field(default_factory=dict)
    # The function tag's head (engine.heads, engine.head_init); the defaults are the paper's.
    readout: str = "last"  # last | mean (over the function tag's p vectors)
    head_hidden: int = 0  # 0: linear; > 0: MLP width
    head_init: str = "zero"  # zero | standardized | probe (closed-form fit on the untrained read-outs)
    # The heads' own AdamW rate (None: lr). After a probe start the fitted head is the sensitive part: a lower
    # rate, or 0 (the head stays as fitted), lets the tags adapt to it without undoing the fit.
    head_lr: float | None = None
    # > 0: the head's centre follows the mean read-out of this many fixed training inputs under the current
    # tags (recomputed every step), so a tag step that shifts every read-out alike moves no prediction; the
    # standardised read-outs differ between inputs by a few % of their size, which such shifts swamp
    head_anchors: int = 0
    isolate: bool | None = None  # None: on for regression function tags, as in the reference code
    reuse: bool | None = None  # reuse span keys/values (None: whenever isolated spans are frozen)
    cache_budget_gb: float | None = None  # bound on stored span keys/values; None = no bound
    cache_dtype: str | None = None  # store reused keys/values as bfloat16/float16 to halve memory
    # A folder that keeps reused keys/values on disk too: spills a store beyond the budget, and serves later
    # runs on the same model and domain tags (engine.span_disk)
    span_store: str | None = None
    overflow: str = "error"  # over-long inputs: error | truncate | window (see encoding.LengthPolicy)
    max_span_tokens: int | None = None  # longest data span kept whole (truncate / window size)
    enrich: bool = False
    train_domain_tags: bool = False
    lm_weight: float = 1.0
    eval_batch_size: int = 32
    evals_per_epoch: int = 2
    checkpoint_every: int = 50  # optimizer steps
    padding_side: str = "right"
    dtype: str = "float32"
    device: str | None = None
    mixed_precision: str = "auto"  # see LoopSettings
    # A generative function tag's evaluation (translation): tokens written at most, beams (1: greedy).
    max_new_tokens: int = 64
    num_beams: int = 1

    def __post_init__(self):
        if self.stage not in STAGES:
            raise DomainLMError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.enrich and self.train_domain_tags:
            raise DomainLMError("choose --enrich (LM loss on domain tags) or --train-domain-tags, not both")
        for name in ("eval_batch_size", "tag_length", "max_new_tokens", "num_beams"):
            if getattr(self, name) < 1:
                raise DomainLMError(f"{name} must be >= 1")
        if not isinstance(self.tag_init_text, dict):
            raise DomainLMError(f"tag_init_text must map tag names to texts, got {self.tag_init_text!r}")
        bad = {k: v for k, v in self.tag_init_text.items() if not (isinstance(v, str) and v.strip())}
        if bad:
            raise DomainLMError(f"tag_init_text: each tag needs a non-empty text, got {bad}")
        self.tag_init_text = {str(k): v for k, v in self.tag_init_text.items()}
        if self.head_init not in ("zero", "standardized", "probe"):
            raise DomainLMError(f"head_init must be zero, standardized or probe, got {self.head_init!r}")
        if self.span_store is not None:
            self.span_store = str(self.span_store)  # a plain value in config.yaml
        if self.head_lr is not None and not self.head_lr >= 0:
            raise DomainLMError(f"head_lr must be >= 0 (or unset: lr), got {self.head_lr}")
        if self.head_anchors < 0:
            raise DomainLMError(f"head_anchors must be >= 0, got {self.head_anchors}")
        if self.head_anchors and self.enrich:  # the anchored loss is the head's alone
            raise DomainLMError("head_anchors trains on the head's loss alone; drop --enrich or the anchors")
        if self.head_init == "probe" and self.head_hidden:
            raise DomainLMError("head_init 'probe' fits a linear head; it cannot start an MLP (head_hidden)")
        self.loop()  # the loop's own checks

    def loop(self) -> LoopSettings:
        own = {f.name for f in fields(self)}
        given = {f.name: getattr(self, f.name) for f in fields(LoopSettings) if f.name in own}
        return LoopSettings(**given, validate_at_start=self.head_init == "probe")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise DomainLMError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class TrainableMethod:
    """What trains and what its loss is. Training examples are the indices 0 .. n_examples - 1; what trains
    is by default every parameter of `module` that requires a gradient, in `module`'s training mode."""

    n_examples: int
    module: torch.nn.Module

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    def parameter_groups(self, params: dict[str, torch.nn.Parameter]) -> list[dict]:
        """The optimizer's parameter groups (a group's own "lr" overrides the loop's); by default one."""
        return [{"params": list(params.values())}]

    def loss(self, batch: list[int]) -> torch.Tensor:
        """The mean training loss over these examples (a scalar with a gradient)."""
        raise NotImplementedError

    def tokens(self, batch: list[int]) -> int:
        """Input positions the batch runs through the model, for throughput."""
        raise NotImplementedError

    def train_mode(self, training: bool) -> None:
        self.module.train(training)

    def memory_plan(self) -> tuple[Any, list[int]] | None:
        """(the model's config, each training example's length in positions through it with a gradient), for
        the check before the first step that the longest batch fits in a CPU's memory; None: no check."""
        return None

    def batches(self, batch_size: int, seed: int) -> list[list[int]]:
        """One epoch's batches, a function of `seed` alone (so a resumed epoch replays them)."""
        return shuffled_batches(self.n_examples, batch_size, seed)


@dataclass
class TrainResult:
    history: list[dict]
    steps: int
    epochs: float  # epochs done
    best_step: int | None  # where the restored weights come from (None: no selection ran)
    best_value: float | None  # the selection metric there, in its own units
    skipped_batches: int  # batches skipped for a non-finite loss or gradient
    seconds: float  # this call's training time
    tokens_per_s: float


@dataclass
class _Position:
    step: int = 0
    epoch: int = 0
    next_group: int = 0  # accumulation groups of the current epoch already applied
    streak: int = 0  # skipped batches in a row
    skipped: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # {"step", "value" (its own units), "weights"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def shuffled_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def grouped_batches(keys: list, batch_size: int, seed: int) -> list[list[int]]:
    """Batches of examples sharing a key (e.g. the protein), in random order."""
    rng = random.Random(seed)
    order = list(range(len(keys)))
    rng.shuffle(order)
    rank = {k: r for r, k in enumerate(dict.fromkeys(keys[i] for i in order))}
    order.sort(key=lambda i: rank[keys[i]])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def length_bucketed_batches(
    lengths: list[int], batch_size: int, seed: int, pool: int = 50
) -> list[list[int]]:
    """Shuffle, sort by length inside pools of `pool` batches, then shuffle the batches: little padding,
    still random. Deterministic for a seed, so a resumed epoch replays the same order."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size * pool):
        chunk = sorted(order[start : start + batch_size * pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def check_memory(
    method: TrainableMethod, settings: LoopSettings, log: Callable[[str], None], description: str
) -> None:
    """Refuse, before any step, training whose largest batch cannot fit in a CPU's free memory (silent when
    it fits; a GPU reports its own out-of-memory error). `fit` calls it; callers that run the model before
    `fit` (e.g. a probe head start) call it first."""
    plan = method.memory_plan()
    params = method.trainable_parameters()
    device = next(iter(params.values())).device if params else torch.device("cpu")
    if plan is None or device.type != "cpu":
        return
    # every epoch's batches: shuffling can put the longest inputs together in any one
    s = settings
    batches = [b for e in range(math.ceil(s.epochs)) for b in method.batches(s.batch_size, s.seed + e)]
    check_batches(plan[0], batches, plan[1], device, log, description)


def fit(
    method: TrainableMethod,
    settings: LoopSettings,
    *,
    validate: Callable[[], dict[str, float]] | None = None,
    select: str | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    description: str = "training",
    memory_checked: bool = False,
) -> TrainResult:
    """Train `method` in place. `validate()` returns metrics (logged as `val_<name>`); with `select`, the
    weights at that metric's best value are restored at the end. `checkpoint`: the file to save to, and
    with `resume` to continue from when it exists. `memory_checked`: the caller ran `check_memory` already
    (with these settings), so it is not run (nor its warning logged) twice."""
    from transformers import get_scheduler

    s = settings
    if method.n_examples == 0:
        raise DomainLMError("the training split is empty")
    params = method.trainable_parameters()
    if not params:
        raise DomainLMError("nothing to train: every parameter is frozen")
    team = _Team.start(method, params, s)
    if not team.main:
        log = _silent
    if not memory_checked:
        check_memory(method, s, log, description)
    seed_everything(s.seed + team.rank)  # rank 0 draws as a single process does
    per_step = s.grad_accum * team.size  # batches an optimizer step takes, over all processes
    steps_per_epoch = math.ceil(math.ceil(method.n_examples / s.batch_size) / per_step)
    total_steps = max(1, math.ceil(steps_per_epoch * s.epochs))
    optimizer = torch.optim.AdamW(method.parameter_groups(params), lr=s.lr, weight_decay=s.weight_decay)
    scheduler = get_scheduler(
        s.schedule,
        optimizer,
        # at least one warm-up step when asked for: short runs otherwise start at the peak rate
        num_warmup_steps=math.ceil(s.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    # The accelerator's optimizer applies fp16's loss scale; the schedule stays ours (accelerate's would step
    # once per process).
    optimizer = team.accelerator.prepare_optimizer(optimizer, device_placement=False)
    at, found = _Position(), None
    if resume and checkpoint is not None:
        found = team.from_main(lambda: _read(Path(checkpoint)) if Path(checkpoint).exists() else None)
    if found is not None:
        at = _restore(found, Path(checkpoint), s, params, optimizer, scheduler, team)
        log(f"resumed from {checkpoint} after step {at.step} of {total_steps} ({at.epoch} epochs done)")
    elif resume:
        log(f"resume: no checkpoint at {checkpoint}, so training starts from step 0")
    eval_every = max(1, steps_per_epoch // s.evals_per_epoch)
    log(
        f"training {sum(p.numel() for p in params.values()):,} parameters "
        f"({_summarise(list(params))}); {total_steps} optimizer steps{team.describe(s)}"
    )
    if s.validate_at_start and validate is not None and at.step == 0 and not at.history:
        row = {"step": 0, "epoch": 0.0}
        _validate(method, validate, select, params, at, row)
        log(_describe(row, total_steps))
        at.history.append(row)
    method.train_mode(True)
    tokens, started = 0, time.perf_counter()
    bar = (
        progress_bar(total=total_steps, description=description, completed=at.step, log=log)
        if team.main
        else contextlib.nullcontext(_NoBar())
    )
    with deferred_interrupts() as stop, bar as bar:
        while at.step < total_steps:
            batches = method.batches(s.batch_size, s.seed + at.epoch)
            groups = [batches[i : i + per_step] for i in range(0, len(batches), per_step)]
            while at.next_group < len(groups) and at.step < total_steps:
                group = groups[at.next_group]
                losses, skipped, n_tokens = _accumulate(method, group, team, at, log)
                tokens += n_tokens
                has_gradient = bool(losses)
                if has_gradient:
                    norm = team.accelerator.clip_grad_norm_(params.values(), s.max_grad_norm or math.inf)
                    if not torch.isfinite(norm) and team.accelerator.scaler is not None:
                        # fp16: an overflow the loss scale answers (the scaler skips the step and lowers
                        # it), not a sign of divergence
                        log(f"step {at.step + 1}: fp16 gradient overflow; step skipped, loss scale lowered")
                        skipped += len(losses)
                        losses = []
                    elif not torch.isfinite(norm):
                        optimizer.zero_grad(set_to_none=True)
                        skipped += len(losses)
                        _count_nonfinite(at, len(losses), log)
                        losses = []
                # A skipped step leaves no gradient, so nothing moves; the schedule still advances.
                if has_gradient or team.accelerator.scaler is None:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                at.step += 1
                at.next_group += 1
                row = {
                    "step": at.step,
                    "epoch": at.epoch + at.next_group / len(groups),
                    "train_loss": float(np.mean(losses)) if losses else None,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": tokens / max(1e-9, time.perf_counter() - started),
                }
                if skipped:
                    row["skipped_batches"] = skipped
                if validate is not None and (at.step % eval_every == 0 or at.step >= total_steps):
                    _validate(method, validate, select, params, at, row)
                    log(_describe(row, total_steps))
                at.history.append(row)
                shown = {"loss": row["train_loss"]} if losses else {}
                bar.update(at.step, tok_s=row["tokens_per_s"], **shown)
                epoch_done = at.next_group == len(groups)
                if epoch_done:
                    at.epoch, at.next_group = at.epoch + 1, 0
                signal_name = team.any_signal(stop.signal)
                due = s.checkpoint_every and at.step % s.checkpoint_every == 0
                if checkpoint is not None and (due or epoch_done or at.step >= total_steps or signal_name):
                    _save(Path(checkpoint), s, params, optimizer, scheduler, at, team)
                if signal_name:
                    raise TrainingInterrupted(_stopped(signal_name, at.step, total_steps, checkpoint))
                if epoch_done:
                    break
    seconds = time.perf_counter() - started
    if at.best is not None:
        _copy_into(params, at.best["weights"])
        log(f"restored the best validation state (step {at.best['step']}, {select}={at.best['value']:.5g})")
    method.train_mode(False)
    return TrainResult(
        history=at.history,
        steps=at.step,
        epochs=round(at.epoch + at.next_group / steps_per_epoch, 4),
        best_step=at.best["step"] if at.best else None,
        best_value=at.best["value"] if at.best else None,
        skipped_batches=at.skipped,
        seconds=seconds,
        tokens_per_s=tokens / max(1e-9, seconds),
    )


def _accumulate(method, group: list[list[int]], team: _Team, at: _Position, log):
    """Forward and backward passes of this process's share of a step's batches: the step's finite batch
    losses (all processes'), its skipped batches and tokens. Gradients end up summed over processes; a
    step's loss is the mean over all its batches, so each backward is scaled by 1 / len(group)."""
    mine = group[team.rank :: team.size]
    finite, losses, tokens = [], [], 0
    for batch in mine:
        with team.accelerator.autocast():
            loss = method.loss(batch)
        ok = bool(torch.isfinite(loss.detach()))
        finite.append(ok)
        if team.size == 1:  # counted as it happens: a diverged run stops at its NONFINITE_LIMIT-th batch
            _note_batch(at, ok, log)
        if not ok:
            continue
        team.accelerator.backward(loss / len(group))
        losses.append(float(loss.detach()))
        tokens += method.tokens(batch)
    if team.size > 1:
        finite, losses, tokens = team.merge_step(group, finite, losses, tokens)
        for ok in finite:  # in the batches' order, as one process would have met them
            _note_batch(at, ok, log)
        team.sum_gradients()
    return losses, finite.count(False), tokens


def _note_batch(at: _Position, finite: bool, log) -> None:
    if finite:
        at.streak = 0
    else:
        _count_nonfinite(at, 1, log)


def _silent(_: str) -> None:
    pass


class _NoBar:
    """The progress bar of a process that is not the main one."""

    def update(self, completed: int, **fields) -> None:
        pass


class _Team:
    """This process among those training together (one, when not launched with several): its rank, its
    accelerator, and the collectives the loop needs. With one process every method returns at once."""

    def __init__(self, accelerator, rank: int, size: int, params: dict[str, torch.nn.Parameter]):
        self.accelerator, self.rank, self.size, self.params = accelerator, rank, size, params
        self.main = rank == 0

    @classmethod
    def start(cls, method: TrainableMethod, params: dict, settings: LoopSettings) -> _Team:
        size, rank = distributed.num_processes(), distributed.process_index()
        if size > 1:
            here = distributed.device()
            if next(iter(params.values())).device != here:
                method.module.to(here)  # each process trains on its own device
        on = next(iter(params.values())).device
        precision = distributed.resolve_mixed_precision(settings.mixed_precision, on)
        accelerator = distributed.accelerator(precision)
        if precision != "no" and accelerator.device.type != on.type:
            raise DomainLMError(
                f"mixed_precision {precision} runs on {accelerator.device.type}, but the model is on {on}; "
                f"put the model on {accelerator.device.type} or use mixed_precision no"
            )
        if precision == "fp16" and any(p.dtype != torch.float32 for p in params.values()):
            raise DomainLMError(
                "mixed_precision fp16 needs float32 trainable weights (its loss scale cannot unscale fp16 "
                "gradients); load the model in float32 or bfloat16, or use mixed_precision bf16"
            )
        team = cls(accelerator, rank, size, params)
        if size > 1:  # every process starts from the main process's weights (a head's random start)
            with torch.no_grad():
                for p in params.values():
                    torch.distributed.broadcast(p.data, src=0)
        return team

    def describe(self, settings: LoopSettings) -> str:
        precision = self.accelerator.mixed_precision
        parts = [f"mixed precision {precision}"] if precision != "no" else []
        if self.size > 1:
            parts.append(
                f"{self.size} processes, {settings.batch_size} x {settings.grad_accum} x {self.size} "
                "examples a step"
            )
        return f" ({'; '.join(parts)})" if parts else ""

    def from_main(self, read: Callable[[], object]):
        """`read()` on the main process, its result (or its DomainLMError) on every process."""
        if self.size == 1:
            return read()
        try:
            found = ("ok", read()) if self.main else None
        except DomainLMError as e:
            found = ("error", str(e))
        kind, value = distributed.from_main(found)
        if kind == "error":
            raise DomainLMError(value)
        return value

    def merge_step(self, group, finite: list[bool], losses: list[float], tokens: int):
        """Every process's finite flags and losses for the step's batches, in the batches' order."""
        n = len(group)
        flags, values = [0.0] * n, [0.0] * n
        for k, ok in enumerate(finite):
            flags[self.rank + k * self.size] = 1.0 if ok else -1.0
        mine = iter(losses)
        for k, ok in enumerate(finite):
            if ok:
                values[self.rank + k * self.size] = next(mine)
        summed = distributed.sum_across([*flags, *values, float(tokens)])
        finite_all = [f > 0 for f in summed[:n]]
        losses_all = [v for v, ok in zip(summed[n : 2 * n], finite_all) if ok]
        return finite_all, losses_all, int(summed[-1])

    @torch.no_grad()
    def sum_gradients(self) -> None:
        """Sum the trainable weights' gradients over processes (one all-reduce); a weight no process has a
        gradient for keeps none, so the optimizer leaves it alone as a single process would."""
        params = list(self.params.values())
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
            + [torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)]
        )
        torch.distributed.all_reduce(flat)
        present, offset = flat[-len(params) :], 0
        for p, has in zip(params, present.tolist()):
            if has:
                p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype).clone()
            offset += p.numel()

    def any_signal(self, mine: str | None) -> str | None:
        """A Ctrl-C / SIGTERM received by any process, so that all stop after the same step."""
        if self.size == 1:
            return mine
        return next((name for name in distributed.all_objects(mine) if name), None)

    def random_states(self) -> list[dict]:
        return distributed.all_objects(_rng_state()) if self.size > 1 else [_rng_state()]


def _stopped(signal_name: str, step: int, total_steps: int, checkpoint: Path | None) -> str:
    if checkpoint is None:
        return f"{signal_name} after step {step} of {total_steps}; nothing was saved (no checkpoint file)"
    return (
        f"{signal_name} after step {step} of {total_steps}: checkpoint written to {checkpoint}; "
        "continue with the same command and --resume"
    )


def _count_nonfinite(at: _Position, n: int, log: Callable[[str], None]) -> None:
    at.streak += n
    at.skipped += n
    log(f"step {at.step + 1}: skipped {n} batch(es) with a non-finite loss or gradient")
    if at.streak >= NONFINITE_LIMIT:
        raise DomainLMError(
            f"{at.streak} batches in a row gave a non-finite loss or gradient (at step {at.step + 1}): "
            "training has diverged. Lower the learning rate, train in float32, or check the inputs"
        )


def _validate(method, validate, select, params, at: _Position, row: dict) -> None:
    scores = validate()
    method.train_mode(True)
    # Plain floats: the history goes into checkpoints, which hold no numpy objects.
    row.update({f"val_{k}": float(v) for k, v in scores.items() if isinstance(v, (int, float))})
    if select is None:
        return
    if select not in scores:
        raise DomainLMError(f"validation gave no {select!r} to select on; it gave {sorted(scores)}")
    value = scores[select]
    if at.best is None or selection_value(select, value) < selection_value(select, at.best["value"]):
        weights = {k: p.detach().clone() for k, p in params.items()}
        at.best = {"step": at.step, "value": float(value), "weights": weights}


def _describe(row: dict, total_steps: int) -> str:
    shown = {k: v for k, v in row.items() if k != "step" and isinstance(v, float)}
    return f"step {row['step']}/{total_steps} " + " ".join(f"{k}={v:.4g}" for k, v in shown.items())


def _summarise(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names)} tensors)" if len(names) > shown else "")


@torch.no_grad()
def _copy_into(params: dict[str, torch.nn.Parameter], tensors: dict[str, torch.Tensor]) -> None:
    # In place: the optimizer holds these very parameters.
    for name, value in tensors.items():
        params[name].copy_(value)


# ---- checkpoints ------------------------------------------------------------------------------------------


def _save(path: Path, settings: LoopSettings, params, optimizer, scheduler, at: _Position, team) -> None:
    """Every process takes part (their random states are gathered); the main process writes."""
    states = team.random_states()
    if not team.main:
        return
    best = at.best and {**at.best, "weights": {k: v.cpu() for k, v in at.best["weights"].items()}}
    scaler = team.accelerator.scaler
    state = {
        "settings": asdict(settings),
        "trainable": {k: p.detach().cpu() for k, p in params.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "position": {k: v for k, v in asdict(at).items() if k not in {"history", "best"}},
        "history": at.history,
        "best": best,
        "rng": states[0],
        "processes": team.size,
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    if team.size > 1:
        state["rng_per_process"] = states
    with io.atomic_path(path) as tmp:
        torch.save(state, tmp)


def _read(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:  # our words: torch's message suggests loading it unsafely
        raise DomainLMError(
            f"cannot read the checkpoint {path}: it holds objects other than tensors and plain values; "
            "refused, as unpickling them could run code"
        ) from None
    except Exception as e:  # a truncated or foreign file: say which, rather than a pickle traceback
        raise DomainLMError(f"cannot read the checkpoint {path}: {str(e).splitlines()[0]}") from None


def _restore(state: dict, path: Path, settings: LoopSettings, params, optimizer, scheduler, team):
    # A setting newer than the checkpoint reads as its default.
    saved_settings = {f.name: f.default for f in fields(LoopSettings) if f.name not in state["settings"]}
    saved_settings.update(state["settings"])
    if saved_settings != asdict(settings):
        changed = sorted(k for k, v in asdict(settings).items() if saved_settings.get(k) != v)
        raise DomainLMError(
            f"the checkpoint {path} was written with other training settings ({', '.join(changed)}); "
            "resume with the same settings, or start again"
        )
    processes = state.get("processes", 1)
    if processes != team.size:
        raise DomainLMError(
            f"the checkpoint {path} was written by {processes} process(es), this run has {team.size}: an "
            f"optimizer step spans batch_size x grad_accum x processes examples, so resume with "
            f"{processes} (accelerate launch --num_processes {processes} ...), or start again"
        )
    saved = state["trainable"]
    if {k: tuple(v.shape) for k, v in saved.items()} != {k: tuple(p.shape) for k, p in params.items()}:
        raise DomainLMError(f"the checkpoint {path} holds other trainable weights than this model's")
    _copy_into(params, saved)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler") and team.accelerator.scaler is not None:
        team.accelerator.scaler.load_state_dict(state["scaler"])
    _set_rng_state(state.get("rng_per_process", [state["rng"]])[team.rank])
    device = next(iter(params.values())).device
    best = state["best"]
    if best is not None:
        best["weights"] = {k: v.to(device) for k, v in best["weights"].items()}
    return _Position(**state["position"], history=state["history"], best=best)


def _rng_state() -> dict:
    """Every random state a step may draw from, as tensors and plain values."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "python": {"version": version, "state": list(mt), "gauss": python_gauss},
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
