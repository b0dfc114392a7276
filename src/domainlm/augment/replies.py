"""Turn teacher replies into QA items, or into rejects with a reason.

The prompts ask for one JSON object `{"question", "answer", "label"}`; replies wrapped in a fenced code
block or surrounded by prose are accepted as long as one JSON object can be cut out of them, and a reply with
no JSON is read from "Question: / Answer: / Final decision:" lines when it has them.

A generated question must be about its source abstract: at least `min_grounding` (default 0.4) of its
content words (English stop words, numbers and words under three letters dropped, the rest compared by
their first five letters, a crude stem) must occur in the source item's context, question or long
answer. Measured on PubMedQA's 1,000 labelled items, 98% of questions reach 0.4 against their own context,
and 1% against a random other item's context; small teachers' off-topic inventions ("perinatal
mortality" for an abstract on mammography) fall below it.

Near duplicates are measured by the Jaccard similarity of two questions' word sets (lower-cased, punctuation
dropped): |A & B| / |A | B|, the classic resemblance measure for near-duplicate text (Broder, 1997). The
default threshold, 0.8, is far above what distinct questions reach: no two of PubMedQA's 1,000 labelled
questions have a similarity of even 0.6, while a "rewrite" that swaps one word of a 13-word question
scores 0.86.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from domainlm.qa.data import LABELS, QAItem, stripped

# Reasons a reply is rejected; `duplicate` and `near_duplicate` are decided over the whole output, the others
# per reply.
REASONS = (
    "unparseable", "empty", "too_long", "bad_label", "label_changed", "copy", "near_copy", "off_topic",
    "duplicate", "near_duplicate", "request_failed",
)  # fmt: skip


@dataclass(frozen=True)
class Filters:
    """Quality thresholds for generated items. The length limits are twice PubMedQA's longest question
    (32 words) and long answer (128 words)."""

    near_duplicate: float = 0.8  # word-set Jaccard at or above which two questions count as near duplicates
    max_question_words: int = 64
    max_answer_words: int = 256
    min_grounding: float = 0.4  # share of a question's content words found in its source item; 0: off

    def __post_init__(self):
        from domainlm.errors import InputError

        if not 0 < self.near_duplicate <= 1:
            raise InputError(f"near_duplicate must be in (0, 1], got {self.near_duplicate!r}")
        if not 0 <= self.min_grounding <= 1:
            raise InputError(f"min_grounding must be in [0, 1], got {self.min_grounding!r}")
        for name in ("max_question_words", "max_answer_words"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)!r}")


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def normalise(text: str) -> str:
    """Lower-case words only: two texts that differ in case, spacing or punctuation compare equal."""
    return " ".join(words(text))


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


QUESTION_WORDS = frozenset({"does", "did", "doing", "done"})  # not in scikit-learn's stop words


def content_stems(text: str) -> set[str]:
    """A text's content words, cut to five letters: no stop words, numbers or words under three letters."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    stop = ENGLISH_STOP_WORDS | QUESTION_WORDS
    return {w[:5] for w in words(text) if len(w) > 2 and not w.isdigit() and w not in stop}


def grounding(question: str, source: str) -> float:
    """The share of the question's content words (stems) that occur in `source`; 1.0 when it has none."""
    stems = content_stems(question)
    return len(stems & content_stems(source)) / len(stems) if stems else 1.0


def jaccard(a: frozenset | set, b: frozenset | set) -> float:
    """|a & b| / |a | b|; 1.0 for two empty sets (they are the same text, after normalising)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


class NearDuplicates:
    """Questions seen so far, and the first one a new question is a (near) duplicate of. Only sets of a
    size that could reach the threshold are compared: Jaccard >= t needs t <= |a| / |b| <= 1 / t."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._exact: dict[str, str] = {}
        self._by_size: dict[int, list[tuple[frozenset, str]]] = {}

    def add(self, question: str, item_id: str) -> None:
        self._exact.setdefault(normalise(question), item_id)
        tokens = frozenset(words(question))
        self._by_size.setdefault(len(tokens), []).append((tokens, item_id))

    def match(self, question: str) -> tuple[str, str, float] | None:
        """(`duplicate` or `near_duplicate`, the id it repeats, the similarity), or None."""
        first = self._exact.get(normalise(question))
        if first is not None:
            return "duplicate", first, 1.0
        tokens, t = frozenset(words(question)), self.threshold
        low, high = math.ceil(len(tokens) * t - 1e-9), math.floor(len(tokens) / t + 1e-9)
        for size in range(low, high + 1):
            for seen, item_id in self._by_size.get(size, ()):
                similarity = jaccard(tokens, seen)
                if similarity >= t:
                    return "near_duplicate", item_id, similarity
        return None


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


# "Question: ... / Answer: ... / Final decision: ..." lines, the layout the prompts show the source item in:
# small teachers (a 135M model rarely writes the JSON asked for) often answer in it.
_FIELD_LINE = re.compile(
    r"^[\s*#>-]*(question|long answer|answer|final decision|decision|label)[\s*]*:[\s*]*(.*)$", re.I
)
_FIELDS = {"question": "question", "long answer": "answer", "answer": "answer"}


def extract_fields(text: str) -> dict | None:
    """The reply's question, answer and label: its JSON object, else its labelled lines (each field's last
    occurrence, continued by the unlabelled lines under it)."""
    data = extract_json(text)
    if data is not None:
        return data
    fields: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = _FIELD_LINE.match(line)
        if match:
            current = _FIELDS.get(match.group(1).lower(), "label")
            fields[current] = [match.group(2)]
        elif current is not None and line.strip():
            fields[current].append(line.strip())
        else:
            current = None  # a blank line ends a field
    if "question" not in fields:
        return None
    return {name: " ".join(part.strip() for part in parts).strip() for name, parts in fields.items()}


@dataclass
class Verdict:
    item: QAItem | None
    reason: str | None = None
    detail: str = ""


DEFAULT_FILTERS = Filters()


def judge_reply(
    text: str, parent: QAItem, mode: str, sample: int, filters: Filters = DEFAULT_FILTERS
) -> Verdict:
    """Checks that need only this reply: parseable, non-empty, not over-long, a valid (for rewrites: kept)
    label, and no (near) copy of the source question."""
    if not text.strip():
        return Verdict(None, "empty", "the reply is empty")
    data = extract_fields(text)
    if data is None:
        return Verdict(None, "unparseable", "no JSON object and no 'Question:' line in the reply")
    question = stripped(data.get("question"))
    answer = stripped(data.get("answer") or data.get("long_answer"))
    empty = [name for name, value in (("question", question), ("answer", answer)) if not value]
    if empty:
        return Verdict(None, "empty", f"missing or empty {empty}")
    lengths = {
        "question": (question, filters.max_question_words),
        "answer": (answer, filters.max_answer_words),
    }
    for name, (value, limit) in lengths.items():
        if len(words(value)) > limit:
            return Verdict(None, "too_long", f"the {name} has {len(words(value))} words (limit {limit})")
    label = stripped(data.get("label") or data.get("final_decision")).lower().strip(" .!\"'")
    if label not in LABELS:
        return Verdict(None, "bad_label", f"label {data.get('label')!r} is not one of {list(LABELS)}")
    if mode == "rewrite" and label != parent.label:
        return Verdict(None, "label_changed", f"label {label!r} differs from the original {parent.label!r}")
    if normalise(question) == normalise(parent.question):
        return Verdict(None, "copy", "the question repeats the original question")
    if mode == "rewrite" and parent.long_answer and normalise(answer) == normalise(parent.long_answer):
        return Verdict(None, "copy", "the answer repeats the original answer")
    similarity = jaccard(frozenset(words(question)), frozenset(words(parent.question)))
    if similarity >= filters.near_duplicate:
        detail = f"the question is a near copy of the original (word Jaccard {similarity:.2f})"
        return Verdict(None, "near_copy", detail)
    if filters.min_grounding:
        source = " ".join((parent.context, parent.question, parent.long_answer or ""))
        share = grounding(question, source)
        if share < filters.min_grounding:
            detail = f"{share:.0%} of the question's content words occur in its source item"
            return Verdict(None, "off_topic", f"{detail} (minimum {filters.min_grounding:.0%})")
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
