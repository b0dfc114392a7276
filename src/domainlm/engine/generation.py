"""Text generation from a causal LM, shared by tagged prompts, the PEFT baselines and plain prompts.

Prompts are left-padded into one batch and handed to transformers' `generate` (its KV cache, greedy or beam
search). A tagged prompt goes in as `inputs_embeds`, the tag vectors spliced in, so generation continues
exactly the forward pass the tags were trained with. Each continuation is cut at the first end-of-sequence
token and, with `stop_at_newline`, at the first newline (a prompted base model goes on to the next line).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from domainlm.errors import DomainLMError


@dataclass
class Decoding:
    max_new_tokens: int = 64
    num_beams: int = 1  # 1: greedy
    stop_at_newline: bool = True
    batch_size: int = 16

    def __post_init__(self):
        for name in ("max_new_tokens", "num_beams", "batch_size"):
            if getattr(self, name) < 1:
                raise DomainLMError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Generated:
    """Texts in input order, the new token ids of each (up to and without EOS), and the time spent."""

    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_tokens(self) -> int:
        return sum(len(ids) for ids in self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0

    def extend(self, other: Generated) -> None:
        self.texts += other.texts
        self.token_ids += other.token_ids
        self.seconds += other.seconds


def newline_ids(tokenizer) -> list[int]:
    """Every token whose text holds a newline ("\\n", ".\\n", byte tokens...), found once per tokenizer by
    decoding the vocabulary: as extra end tokens they stop greedy and beam search alike, which
    transformers' stop strings do not manage for every tokenizer."""
    cached = getattr(tokenizer, "_domainlm_newline_ids", None)
    if cached is None:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        cached = [i for i, t in enumerate(texts) if "\n" in t]
        tokenizer._domainlm_newline_ids = cached
    return cached


def generation_config(tokenizer, decoding: Decoding):
    """Deterministic decoding whatever the model's own generation defaults (some sample)."""
    from transformers import GenerationConfig

    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stops = eos + (newline_ids(tokenizer) if decoding.stop_at_newline else [])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    return GenerationConfig(
        max_new_tokens=decoding.max_new_tokens,
        num_beams=decoding.num_beams,
        do_sample=False,
        use_cache=True,
        eos_token_id=stops or None,
        pad_token_id=pad,
    )


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    decoding: Decoding,
    *,
    attention_mask: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
) -> Generated:
    """One `generate` call over a left-padded batch given as ids or as embeddings."""
    config = generation_config(tokenizer, decoding)  # before the clock: the first call scans the vocabulary
    started = time.perf_counter()
    kwargs = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
    out = model.generate(**kwargs, attention_mask=attention_mask, generation_config=config)
    if inputs_embeds is None:  # decoder-only models return the prompt ids too
        out = out[:, attention_mask.shape[1] :]
    result = Generated(seconds=time.perf_counter() - started)
    eos = tokenizer.eos_token_id
    for row in out.tolist():
        ids = _until_stop(row, eos, set(config.eos_token_id or ()) - {eos}, config.pad_token_id)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if decoding.stop_at_newline:
            text = text.split("\n", 1)[0]
        result.token_ids.append(ids)
        result.texts.append(text.strip())
    return result


def _until_stop(row: list[int], eos: int | None, newlines: set[int], pad: int) -> list[int]:
    """The new tokens up to EOS (left out) or a newline token (kept: ".\\n" holds a full stop); generate
    pads the rows that stopped before the longest."""
    for i, t in enumerate(row):
        if t == eos:
            return row[:i]
        if t in newlines:
            return row[: i + 1]
    while row and row[-1] == pad:
        row = row[:-1]
    return row
