"""Answer scoring by likelihood: a generative student picks the label whose answer sentence it finds most
probable, so it always gives a valid label (parsing generated text can fail).

Students learn to write a long answer, then " the answer to the question given the context is L.". So the
student first writes its answer as usual; what it wrote before the answer sentence (its rationale, all of
its text when the sentence is missing) is kept, and for each label L the continuation, the answer sentence
for L plus end-of-sequence, is scored after prompt + rationale. The score is the sum of the continuation's
token log-probabilities, log P(sentence | prompt, rationale): the probability of the whole answer, so a
label split into more tokens is not favoured (a mean per token would favour it, since the shared phrase
dilutes the label's own tokens). The phrase is the same for every label, so only the label, the full
stop and the end token decide.
"""

from __future__ import annotations

import torch

from domainlm.qa.data import LABELS
from domainlm.qa.students.answers import answer_sentence
from domainlm.target_loss import target_logits


def continuation_ids(student, label: str) -> list[int]:
    eos = [student.tokenizer.eos_token_id] if student.tokenizer.eos_token_id is not None else []
    return student._ids(" " + answer_sentence(label)) + eos


@torch.no_grad()
def label_log_likelihoods(student, items, rationales: list[str] | None = None) -> list[dict[str, float]]:
    """Per item, log P(answer sentence for L | prompt, rationale) for every label L (three rows per item,
    batched). The rationale is cut, as a training target's long answer is, to leave the sentence room."""
    student.model.eval()
    continuations = {label: continuation_ids(student, label) for label in LABELS}
    room = student.config.max_answer_tokens - max(len(c) for c in continuations.values())
    rows = []
    for item, text in zip(items, rationales or [""] * len(items), strict=True):
        prompt = student.encode(item, train=False).features["input_ids"]
        prompt = prompt + (student._ids(" " + text)[: max(0, room)] if text else [])
        for label in LABELS:
            target = continuations[label]
            rows.append({"input_ids": prompt + target, "labels": [-100] * len(prompt) + target})
    sums: list[float] = []
    size = student.config.eval_batch_size * len(LABELS)
    for start in range(0, len(rows), size):
        batch = student.on_device(student.collate(rows[start : start + size]))
        # logits only where a sentence token is predicted (the prompt's need no output layer)
        logits, targets = target_logits(
            student.model, batch["input_ids"], batch["attention_mask"], batch["labels"]
        )
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        known = targets != -100
        picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        sums.extend((picked * known).sum(dim=1).tolist())
    n = len(LABELS)
    return [dict(zip(LABELS, sums[i * n : (i + 1) * n], strict=True)) for i in range(len(items))]


def best_label(scores: dict[str, float]) -> str:
    """The most likely label; ties go to the first in LABELS order (yes, no, maybe)."""
    return max(LABELS, key=lambda label: scores[label])
