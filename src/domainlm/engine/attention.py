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
import functools
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
    mask = attention_mask if active.mask is None else active.mask
    if active.prefix is not None:
        past_k, past_v = active.prefix[layer]
        return prefixed_attention(query, key, value, past_k, past_v, mask, kwargs.get("scaling"))
    kwargs["is_causal"] = False if active.mask is not None else kwargs.get("is_causal")
    return _sdpa()(module, query, key, value, mask, **kwargs)


def prefixed_attention(query, key, value, past_k, past_v, mask, scaling=None):
    """Attention of new positions over stored keys/values plus their own, without concatenating the (large,
    gradient-free) stored part: scores are computed in two blocks and only the small score matrix is joined.
    Shapes: query [B, H, Q, D]; key/value [B, KV, Q, D]; past [B, KV, P, D]; mask bool [B, 1, Q, P + Q].
    Returns [B, Q, H, D] like the attention functions of transformers."""
    b, h, q_len, d = query.shape
    kv = key.shape[1]
    rep = h // kv
    scale = scaling if scaling is not None else d**-0.5
    q = query.reshape(b, kv, rep * q_len, d)  # query head i uses key/value head i // rep
    past_k, past_v = past_k.to(query.dtype), past_v.to(query.dtype)
    p_len = past_k.shape[2]
    scores = torch.cat([q @ past_k.transpose(-1, -2), q @ key.transpose(-1, -2)], dim=-1) * scale
    allowed = mask.unsqueeze(2).expand(b, 1, rep, q_len, p_len + q_len).reshape(b, 1, rep * q_len, -1)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = scores.float().softmax(-1).to(query.dtype)
    out = probs[..., :p_len] @ past_v + probs[..., p_len:] @ value
    return out.reshape(b, h, q_len, d).transpose(1, 2).contiguous(), None


@functools.cache  # once per process
def _register() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(NAME, domainlm_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def install(model) -> bool:
    """Switch `model` to the hook; False when its family does not use the attention interface."""
    _register()
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
