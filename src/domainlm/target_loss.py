"""The next-token loss of a causal LM on its target tokens only, with the output layer applied only where a
target is predicted. A generative student or translation pair has a long prompt and a short target; a large
vocabulary (Gemma's 262k) makes the full logits the most costly part of a step and its largest tensor."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

IGNORE = -100
PROMPT_BEFORE_INPUT = {"PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING"}


def target_loss(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """Mean cross-entropy over the tokens whose label is not -100, as `model(..., labels=labels).loss`.
    `model`: a transformers causal LM or a peft model around one (LoRA, prefix or prompt tuning)."""
    targets = labels[:, 1:]
    positions = (targets != IGNORE).any(0).nonzero().squeeze(1)  # states that predict some item's target
    if not _keeps_logits(model) or len(positions) == 0:
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    # virtual tokens that peft puts in front of the input shift every state of the input
    shift = _virtual_tokens_in_front(model)
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions + shift)
    chosen = targets[:, positions]
    return F.cross_entropy(out.logits.flatten(0, 1).float(), chosen.flatten(), ignore_index=IGNORE)


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _keeps_logits(model) -> bool:
    return "logits_to_keep" in inspect.signature(type(_base(model)).forward).parameters


def _virtual_tokens_in_front(model) -> int:
    config = getattr(model, "active_peft_config", None)
    kind = getattr(getattr(config, "peft_type", None), "value", None)
    return config.num_virtual_tokens if kind in PROMPT_BEFORE_INPUT else 0
