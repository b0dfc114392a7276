"""Running a TaggedModel without training it: head predictions and the next-token loss."""

from __future__ import annotations

import numpy as np
import torch

from domainlm.engine.model import TaggedModel
from domainlm.engine.reuse import reused_forward
from domainlm.errors import DomainLMError
from domainlm.progress import batches_by_length


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def predict(
    tm: TaggedModel,
    inputs: list,
    *,
    isolate: bool,
    batch_size: int = 32,
    description: str = "predicting",
    cache=None,
) -> np.ndarray:
    """Regression values (label units) or class probabilities, in input order, length-sorted for speed.
    With a `SpanCache` (isolated, frozen spans) only the function segments run through the model."""
    preds = _head_outputs(tm, inputs, "predictions", isolate, batch_size, description, cache)
    return _softmax(preds) if preds.ndim == 2 else preds


def readout_features(
    tm: TaggedModel, inputs: list, *, isolate: bool, batch_size: int = 32, cache=None
) -> np.ndarray:
    """The states each input's head reads [N, d] (before the head's standardisation), in input order."""
    return _head_outputs(tm, inputs, "features", isolate, batch_size, "reading out", cache)


@torch.no_grad()
def _head_outputs(tm, inputs, field: str, isolate: bool, batch_size: int, description: str, cache):
    was_training = tm.training
    tm.eval()
    lengths = [len(tm.encoder.encode(x, i).ids) for i, x in enumerate(inputs)]
    outs: dict[int, np.ndarray] = {}
    for idx in batches_by_length(lengths, batch_size, description):
        if cache is not None:
            out = reused_forward(tm, cache, [inputs[i] for i in idx])
        else:
            batch = tm.encode([inputs[i] for i in idx], isolate=isolate, padding_side="right")
            out = tm(**to_device(batch, tm.device))
        value = getattr(out, field)
        if value is None:
            raise DomainLMError("these inputs do not end in a function tag with a head")
        for i, p in zip(idx, value.float().cpu().numpy()):
            outs[i] = p
    tm.train(was_training)
    return np.stack([outs[i] for i in range(len(inputs))])


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@torch.no_grad()
def lm_loss(tm: TaggedModel, inputs: list, batch_size: int = 32) -> float:
    """Mean next-token loss over non-tag tokens."""
    was_training = tm.training
    tm.eval()
    total, count = 0.0, 0
    for s in range(0, len(inputs), batch_size):
        batch = to_device(tm.encode(inputs[s : s + batch_size], lm_labels=True), tm.device)
        n = int((batch["lm_labels"][:, 1:] != -100).sum())  # the tokens the loss averages over
        total += float(tm(**batch).lm_loss) * n
        count += n
    tm.train(was_training)
    return total / max(1, count)
