"""The next-token loss of a causal LM on its target tokens only, with the output layer applied only where a
target is predicted. A generative student or translation pair has a long prompt and a short target; a large
vocabulary (Gemma's 262k) makes the full logits the most costly part of a step and its largest tensor."""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

IGNORE = -100
PROMPT_BEFORE_INPUT = {"PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING"}


def target_loss(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """Mean cross-entropy over the tokens whose label is not -100, as `model(..., labels=labels).loss`.
    `model`: a transformers causal LM or a peft model around one (LoRA, prefix or prompt tuning)."""
    logits, targets = target_logits(model, input_ids, attention_mask, labels)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


def target_logits(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, K, V], targets [B, K]): the logits of the K positions that predict some row's target
    token and the tokens they predict (-100 where a row has no target there)."""
    targets = labels[:, 1:]
    positions = (targets != IGNORE).any(0).nonzero().squeeze(1)  # states that predict some row's target
    # virtual tokens that peft puts in front of the input shift every state of the input
    shift = _virtual_tokens_in_front(model)
    if not _keeps_logits(model) or len(positions) == 0:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits[:, shift:-1], targets
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions + shift)
    return out.logits, targets[:, positions]


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _keeps_logits(model) -> bool:
    return _forward_keeps_logits(type(_base(model)))


@functools.cache
def _forward_keeps_logits(cls: type) -> bool:  # asked every step: read each model class's signature once
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _virtual_tokens_in_front(model) -> int:
    config = getattr(model, "active_peft_config", None)
    kind = getattr(getattr(config, "peft_type", None), "value", None)
    return config.num_virtual_tokens if kind in PROMPT_BEFORE_INPUT else 0
