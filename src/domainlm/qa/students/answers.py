"""The answer sentence students learn to end with, and the hard-match parser that reads the label back."""

from __future__ import annotations

import re
from dataclasses import dataclass

from domainlm.qa.data import LABELS

ANSWER_PHRASE = "the answer to the question given the context is"
FALLBACK_LABEL = "maybe"  # the paper's choice when the phrase is missing

# Words of the phrase may be split by any whitespace (tokenizers decode "is\nyes" or "is  yes"); the label
# may sit in quotes or after a colon, and must be a whole word ("no" in "nothing" does not count).
_PHRASE = r"\s+".join(map(re.escape, ANSWER_PHRASE.split()))
_ANSWER = re.compile(rf"{_PHRASE}[\s:\"'*]*({'|'.join(LABELS)})\b", re.IGNORECASE)
_PHRASE_ONLY = re.compile(_PHRASE, re.IGNORECASE)


@dataclass(frozen=True)
class ParsedAnswer:
    label: str
    matched: bool  # False: no phrase + label found, `label` is the fallback ("maybe"); a parse failure


def answer_sentence(label: str) -> str:
    return f"{ANSWER_PHRASE} {label}."


def parse_answer(text: str) -> ParsedAnswer:
    """The label after the last occurrence of the answer phrase; no match gives "maybe", flagged unmatched."""
    matches = _ANSWER.findall(text or "")
    if not matches:
        return ParsedAnswer(FALLBACK_LABEL, False)
    return ParsedAnswer(matches[-1].lower(), True)


def rationale(text: str) -> str:
    """What a student wrote before its answer sentence (all of it when the sentence is missing)."""
    match = _PHRASE_ONLY.search(text or "")
    return (text[: match.start()] if match else text or "").strip()
