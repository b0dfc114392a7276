"""An attention hook shared by every Hugging Face family that uses the attention interface.

Registered as the implementation "domainlm". With no override active it is plain SDPA, so a wrapped model
computes exactly what the base model computes. Inside `override(...)` it can

* replace the model's mask with our own boolean mask (isolated domain spans),
* record each layer's keys and values (post-RoPE, before GQA repetition) for later reuse, and
* prepend recorded keys and values, so only new positions run through the layers.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import torch

NAME = "domainlm"
_ACTIVE: contextvars.ContextVar[AttentionOverride | None] = contextvars.ContextVar(NAME, default=None)


@dataclass
class AttentionOverride:
    mask: torch.Tensor | None = None  # bool [B, 1, Q, K_total]; True = may attend
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (keys, values) to prepend
    record: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = field(default=None)


def _sdpa():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS["sdpa"]


def domainlm_attention(module, query, key, value, attention_mask, **kwargs):
    active = _ACTIVE.get()
    if active is None:
        return _sdpa()(module, query, key, value, attention_mask, **kwargs)
    layer = module.layer_idx
    if active.record is not None:
        active.record[layer] = (key.detach(), value.detach())
    if active.prefix is not None:
        past_k, past_v = active.prefix[layer]
        key = torch.cat([past_k.to(key.dtype), key], dim=2)
        value = torch.cat([past_v.to(value.dtype), value], dim=2)
    mask = attention_mask if active.mask is None else active.mask
    kwargs["is_causal"] = False if active.mask is not None else kwargs.get("is_causal")
    return _sdpa()(module, query, key, value, mask, **kwargs)


_registered = False


def install(model) -> bool:
    """Switch `model` to the hook; False when its family does not use the attention interface."""
    global _registered
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    if not _registered:
        AttentionInterface.register(NAME, domainlm_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
        _registered = True
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, KeyError, AttributeError, NotImplementedError):
        return False
    return getattr(model.config, "_attn_implementation", None) == NAME


@contextlib.contextmanager
def override(spec: AttentionOverride):
    token = _ACTIVE.set(spec)
    try:
        yield spec
    finally:
        _ACTIVE.reset(token)
