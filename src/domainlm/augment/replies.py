"""Turn teacher replies into QA items, or into rejects with a reason.

The prompts ask for one JSON object `{"question", "answer", "label"}`; replies wrapped in a fenced code
block or surrounded by prose are accepted as long as one JSON object can be cut out of them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from domainlm.qa.data import LABELS, QAItem, stripped

# Reasons a reply is rejected; `duplicate` is decided over the whole output, the others per reply.
REASONS = ("unparseable", "empty", "bad_label", "label_changed", "copy", "duplicate", "request_failed")

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def normalise(text: str) -> str:
    """Lower-case words only: two texts that differ in case, spacing or punctuation compare equal."""
    return " ".join(re.findall(r"\w+", text.lower()))


def extract_json(text: str) -> dict | None:
    """The JSON object in a reply: the whole text, a fenced block, or the outermost {...} span."""
    candidates = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):  # not JSON, an integer too long, or nested too deep
            continue
        if isinstance(value, dict):
            return value
    return None


@dataclass
class Verdict:
    item: QAItem | None
    reason: str | None = None
    detail: str = ""


def judge_reply(text: str, parent: QAItem, mode: str, sample: int) -> Verdict:
    """Checks that need only this reply: parseable, non-empty, a valid (for rewrites: kept) label, no copy."""
    data = extract_json(text)
    if data is None:
        return Verdict(None, "unparseable", "no JSON object in the reply")
    question = stripped(data.get("question"))
    answer = stripped(data.get("answer") or data.get("long_answer"))
    empty = [name for name, value in (("question", question), ("answer", answer)) if not value]
    if empty:
        return Verdict(None, "empty", f"missing or empty {empty}")
    label = stripped(data.get("label") or data.get("final_decision")).lower().strip(" .!\"'")
    if label not in LABELS:
        return Verdict(None, "bad_label", f"label {data.get('label')!r} is not one of {list(LABELS)}")
    if mode == "rewrite" and label != parent.label:
        return Verdict(None, "label_changed", f"label {label!r} differs from the original {parent.label!r}")
    if normalise(question) == normalise(parent.question):
        return Verdict(None, "copy", "the question repeats the original question")
    if mode == "rewrite" and parent.long_answer and normalise(answer) == normalise(parent.long_answer):
        return Verdict(None, "copy", "the answer repeats the original answer")
    item = QAItem(
        id=f"{parent.id}-{mode}{sample}",
        question=question,
        context=parent.context,
        label=label,
        long_answer=answer,
        source=mode,
        parent_id=parent.id,
    )
    return Verdict(item)
