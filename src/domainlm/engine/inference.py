"""Running a TaggedModel without training it: head predictions and the next-token loss."""

from __future__ import annotations

import numpy as np
import torch

from domainlm.engine.model import TaggedModel
from domainlm.errors import DomainLMError
from domainlm.progress import progress_bar


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


@torch.no_grad()
def lm_loss(tm: TaggedModel, inputs: list, batch_size: int = 32) -> float:
    """Mean next-token loss over non-tag tokens."""
    was_training = tm.training
    tm.eval()
    total, count = 0.0, 0
    for s in range(0, len(inputs), batch_size):
        batch = to_device(tm.encode(inputs[s : s + batch_size], lm_labels=True), tm.device)
        out = tm(**batch)
        n = int((batch["lm_labels"][:, 1:] != -100).sum())
        total += float(out.lm_loss) * n
        count += n
    tm.train(was_training)
    return total / max(1, count)
