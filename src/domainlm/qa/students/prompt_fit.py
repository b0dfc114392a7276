"""Student inputs: question + context, with the context (never the question) cut to a token budget."""

from __future__ import annotations

from dataclasses import dataclass

from domainlm.qa.data import QAItem
from domainlm.qa.students.answers import answer_sentence

PROMPT_TEMPLATE = "Question: {question}\nContext: {context}\nAnswer:"


@dataclass(frozen=True)
class FittedPrompt:
    text: str
    truncated: bool  # the context was cut to fit


def prompt_text(question: str, context: str) -> str:
    return PROMPT_TEMPLATE.format(question=question, context=context)


def target_text(item: QAItem) -> str:
    """What a generative student learns to write: the long answer (if any), then the answer sentence."""
    sentence = answer_sentence(item.label)
    return f"{item.long_answer} {sentence}" if item.long_answer else sentence


KEEP = ("start", "end")


def fit_prompt(tokenizer, item: QAItem, max_tokens: int, keep: str = "start") -> FittedPrompt:
    """The prompt for `item` in at most `max_tokens` tokens (special tokens included), cutting the context
    at a token boundary. `keep`: the context's start (cut its end) or its end (cut its start). Character
    offsets keep the kept context exactly as written; a retry absorbs the odd token that merges across the
    cut."""
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, not {keep!r}")
    full = prompt_text(item.question, item.context)
    if _length(tokenizer, full) <= max_tokens:
        return FittedPrompt(full, False)
    context_tokens = tokenizer(
        item.context, add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    offsets = context_tokens["offset_mapping"]
    budget = max_tokens - _length(tokenizer, prompt_text(item.question, ""))
    while True:
        kept = max(0, min(budget, len(offsets)))
        text = prompt_text(item.question, _kept_context(item.context, offsets, kept, keep))
        over = _length(tokenizer, text) - max_tokens
        if over <= 0 or kept == 0:
            # With no context left the question alone overflows: the tokenizer's own truncation takes over.
            return FittedPrompt(text, True)
        budget = kept - over


def _kept_context(context: str, offsets: list, kept: int, keep: str) -> str:
    if not kept:
        return ""
    return context[: offsets[kept - 1][1]] if keep == "start" else context[offsets[-kept][0] :]


def _length(tokenizer, text: str) -> int:
    # verbose=False: measuring an over-long text is the point here, not a mistake worth a warning.
    return len(tokenizer(text, verbose=False)["input_ids"])
