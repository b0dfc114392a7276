"""One trainer for every stage. The stage decides what trains and which loss:

* domain   (stage 1): domain tags, next-token loss on "<Domain> text" (causal LMs only);
* function (stages 2 and 3): function tags and heads, task loss; domain tags frozen unless
  `train_domain_tags` (joint, for encoders) or `enrich` (also the LM loss, the paper's ablation).
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from transformers import get_scheduler

from domainlm.engine.model import TaggedModel
from domainlm.errors import DomainLMError
from domainlm.progress import progress_bar

STAGES = ("domain", "function")


@dataclass
class TrainConfig:
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
    isolate: bool | None = None  # None: on for regression function tags, as in the reference code
    reuse: bool | None = None  # reuse span keys/values (None: whenever isolated spans are frozen)
    cache_budget_gb: float | None = None  # bound on stored span keys/values; None = no bound
    cache_dtype: str | None = None  # store reused keys/values as bfloat16/float16 to halve memory
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

    def __post_init__(self):
        if self.stage not in STAGES:
            raise DomainLMError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.enrich and self.train_domain_tags:
            raise DomainLMError("choose --enrich (LM loss on domain tags) or --train-domain-tags, not both")
        for name in ("batch_size", "grad_accum", "eval_batch_size", "tag_length", "evals_per_epoch"):
            if getattr(self, name) < 1:
                raise DomainLMError(f"{name} must be >= 1")
        if not self.epochs > 0 or not self.lr > 0:
            raise DomainLMError("epochs and lr must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise DomainLMError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class Split:
    """Inputs (strings or rendered parts) and labels (None for the LM stage)."""

    inputs: list
    labels: list | None = None
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.inputs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


class Trainer:
    def __init__(
        self,
        tm: TaggedModel,
        config: TrainConfig,
        run_dir: Path | None = None,
        log: Callable[[str], None] = print,
    ):
        self.tm, self.config, self.run_dir, self.log = tm, config, run_dir, log
        self.isolate = False
        self.reuse = False
        self.cache = None
        self.history: list[dict] = []
        self.step = 0
        self.best: dict | None = None

    # -- what trains ------------------------------------------------------------------------------------
    def configure(self, function_tag: str | None, domain_tags: list[str]) -> None:
        c, tm = self.config, self.tm
        tm.set_length_policy(c.overflow, c.max_span_tokens)
        for p in tm.parameters():
            p.requires_grad_(False)
        if c.stage == "domain":
            if not tm.causal:
                raise DomainLMError(
                    f"stage 1 trains domain tags with the next-token loss; {type(tm.base).__name__} has no LM"
                    " head. On an encoder, train domain tags jointly: --stage function --train-domain-tags"
                )
            tm.set_trainable(names=domain_tags)
            return
        if function_tag is None:
            raise DomainLMError("a function stage needs a function tag (the template's last marker)")
        if c.enrich and not tm.causal:
            raise DomainLMError("--enrich adds the next-token loss and needs a causal LM")
        names = [function_tag] + (domain_tags if (c.train_domain_tags or c.enrich) else [])
        tm.set_trainable(names=names)
        head = tm.specs[function_tag].head
        default_isolate = head is not None and head.type == "regression" and tm.attention_hook
        self.isolate = default_isolate if c.isolate is None else c.isolate
        frozen_spans = self.isolate and not (c.train_domain_tags or c.enrich)
        if c.reuse and not frozen_spans:
            raise DomainLMError(
                "span reuse needs isolated attention and frozen domain tags (no --train-domain-tags/--enrich)"
            )
        self.reuse = frozen_spans if c.reuse is None else c.reuse
        if self.reuse:
            from domainlm.engine.reuse import SpanCache

            budget = None if c.cache_budget_gb is None else int(c.cache_budget_gb * 2**30)
            from domainlm.engine.model import DTYPES

            dtype = DTYPES[c.cache_dtype] if c.cache_dtype else None
            self.cache = SpanCache(tm, budget_bytes=budget, dtype=dtype)

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(
        self,
        train: Split,
        val: Split | None = None,
        evaluate: Callable[[Split], dict] | None = None,
        resume: bool = False,
    ) -> list[dict]:
        c, tm = self.config, self.tm
        if len(train) == 0:
            raise DomainLMError("the training split is empty")
        params = list(tm.trainable_parameters().values())
        if not params:
            raise DomainLMError("nothing to train: every tag is frozen")
        seed_everything(c.seed)
        lengths = [len(tm.encoder.encode(x, i).ids) for i, x in enumerate(train.inputs)]
        per_epoch = math.ceil(len(train) / c.batch_size)
        steps_per_epoch = max(1, math.ceil(per_epoch / c.grad_accum))
        total_steps = max(1, math.ceil(steps_per_epoch * c.epochs))
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        scheduler = get_scheduler(
            c.schedule,
            optimizer,
            num_warmup_steps=int(c.warmup_ratio * total_steps),
            num_training_steps=total_steps,
        )
        start_epoch, skip_batches = 0, 0
        if resume and self._checkpoint_dir().exists():
            start_epoch, skip_batches = self._load_checkpoint(optimizer, scheduler)
            self.log(f"resumed at step {self.step} (epoch {start_epoch}, batch {skip_batches})")
        eval_every = max(1, steps_per_epoch // c.evals_per_epoch)
        self.log(
            f"training {tm.num_trainable():,} of {tm.num_total():,} parameters "
            f"({', '.join(tm.trainable_parameters())}); {total_steps} optimizer steps, isolate={self.isolate}"
        )
        tokens, t0, running = 0, time.time(), []
        with progress_bar(total=total_steps, description=f"stage {c.stage}", completed=self.step) as bar:
            epoch = start_epoch
            while self.step < total_steps:
                batches = self._batches(train, lengths, c.seed + epoch)
                for b, idx in enumerate(batches):
                    if epoch == start_epoch and b < skip_batches:
                        continue
                    out = self._forward(train, idx)
                    (out.loss / c.grad_accum).backward()
                    running.append(float(out.loss.detach()))
                    tokens += sum(lengths[i] for i in idx)
                    last = b == len(batches) - 1
                    if (b + 1) % c.grad_accum == 0 or last:
                        torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        self.step += 1
                        row = {
                            "step": self.step,
                            "epoch": epoch + (b + 1) / len(batches),
                            "train_loss": float(np.mean(running)),
                            "lr": scheduler.get_last_lr()[0],
                            "tokens_per_s": tokens / max(1e-9, time.time() - t0),
                        }
                        running = []
                        if self.step % eval_every == 0 or self.step >= total_steps:
                            row.update(self._validate(val, evaluate))
                        self.history.append(row)
                        if "val_selection_value" in row or self.step % max(1, total_steps // 10) == 0:
                            self.log(_describe(row, total_steps))
                        bar.update(self.step, loss=row["train_loss"], tok_s=row["tokens_per_s"])
                        if self.step % c.checkpoint_every == 0 or last:
                            self._save_checkpoint(
                                optimizer, scheduler, epoch + 1 if last else epoch, 0 if last else b + 1
                            )
                        if self.step >= total_steps:
                            break
                epoch += 1
        self.throughput = tokens / max(1e-9, time.time() - t0)
        if self.best is not None:
            self._restore(self.best["state"])
            self.log(
                f"restored the best validation state (step {self.best['step']}, "
                f"{self.best['metric']}={self.best['value']:.5g})"
            )
        return self.history

    def _batches(self, split: Split, lengths: list[int], seed: int) -> list[list[int]]:
        if self.reuse and self.config.cache_budget_gb is not None:
            # A bounded store: keep examples sharing their longest span (a protein) in one batch.
            from domainlm.engine.reuse import longest_span_key

            keys = [longest_span_key(self.tm, x, i) for i, x in enumerate(split.inputs)]
            return grouped_batches(keys, self.config.batch_size, seed)
        return length_bucketed_batches(lengths, self.config.batch_size, seed)

    def _forward(self, split: Split, idx: list[int]):
        if self.reuse:
            from domainlm.engine.reuse import reused_forward

            labels = [split.labels[i] for i in idx] if split.labels is not None else None
            return reused_forward(self.tm, self.cache, [split.inputs[i] for i in idx], labels)
        return self.tm(**self._batch(split, idx), lm_weight=self.config.lm_weight)

    def _batch(self, split: Split, idx: list[int]) -> dict:
        c = self.config
        labels = (
            [split.labels[i] for i in idx] if split.labels is not None and c.stage == "function" else None
        )
        batch = self.tm.encode(
            [split.inputs[i] for i in idx],
            labels,
            isolate=self.isolate,
            padding_side=c.padding_side,
            lm_labels=c.stage == "domain" or c.enrich,
        )
        return to_device(batch, self.tm.device)

    def _validate(self, val: Split | None, evaluate) -> dict:
        if val is None or evaluate is None or len(val) == 0:
            return {}
        metrics = evaluate(val)
        key, value = metrics.get("selection_metric"), metrics.get("selection_value")
        row = {f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        if key is not None and (self.best is None or value < self.best["value"]):
            self.best = {"step": self.step, "metric": key, "value": value, "state": self._snapshot()}
        self.tm.train()
        return row

    # -- state ----------------------------------------------------------------------------------------------
    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.tm.trainable_parameters().items()}

    def _restore(self, state: dict[str, torch.Tensor]) -> None:
        named = dict(self.tm.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                named[k].copy_(v)

    def _checkpoint_dir(self) -> Path:
        return Path(self.run_dir or ".") / "checkpoint"

    def _save_checkpoint(self, optimizer, scheduler, next_epoch: int, next_batch: int) -> None:
        if self.run_dir is None:
            return
        final = self._checkpoint_dir()
        tmp = final.with_name("checkpoint.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(
            {
                "params": self._snapshot(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": self.step,
                "epoch": next_epoch,
                "next_batch": next_batch,
                "history": self.history,
                "best": self.best,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "numpy": np.random.get_state(),
                    "python": random.getstate(),
                },
                "config": self.config.to_dict(),
            },
            tmp / "state.pt",
        )
        old = final.with_name("checkpoint.old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, optimizer, scheduler) -> tuple[int, int]:
        state = torch.load(self._checkpoint_dir() / "state.pt", weights_only=False)
        self._restore(state["params"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        self.step, self.history, self.best = state["step"], state["history"], state["best"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        return state["epoch"], state["next_batch"]


def _describe(row: dict, total_steps: int) -> str:
    shown = {k: v for k, v in row.items() if k != "step" and isinstance(v, float) and "selection" not in k}
    return f"step {row['step']}/{total_steps} " + " ".join(f"{k}={v:.4g}" for k, v in shown.items())


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def predict(
    tm: TaggedModel,
    inputs: list,
    *,
    isolate: bool,
    batch_size: int = 32,
    padding_side: str = "right",
    description: str = "predicting",
    cache=None,
) -> np.ndarray:
    """Regression values (label units) or class probabilities, in input order, length-sorted for speed.
    With a `SpanCache` (isolated, frozen spans) only the function segments run through the model."""
    was_training = tm.training
    tm.eval()
    order = sorted(range(len(inputs)), key=lambda i: len(tm.encoder.encode(inputs[i], i).ids))
    outs: dict[int, np.ndarray] = {}
    with progress_bar(total=len(inputs), description=description) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            if cache is not None:
                from domainlm.engine.reuse import reused_forward

                pred = reused_forward(tm, cache, [inputs[i] for i in idx]).predictions
            else:
                batch = tm.encode([inputs[i] for i in idx], isolate=isolate, padding_side=padding_side)
                pred = tm(**to_device(batch, tm.device)).predictions
            if pred is None:
                raise DomainLMError("these inputs do not end in a function tag with a head")
            if pred.ndim == 2:
                pred = pred.softmax(-1)
            for i, p in zip(idx, pred.float().cpu().numpy()):
                outs[i] = p
            bar.update(min(s + batch_size, len(order)))
    tm.train(was_training)
    return np.stack([outs[i] for i in range(len(inputs))])
