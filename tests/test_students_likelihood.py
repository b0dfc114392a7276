"""Answer scoring by likelihood: every answer is a valid label, and the scores are log P(answer sentence |
prompt, rationale) computed exactly (batched, right-padded rows equal one unpadded row scored alone)."""

import pytest
import torch

from domainlm.errors import InputError
from domainlm.qa.data import LABELS
from domainlm.qa.students.answers import rationale
from domainlm.qa.students.config import Decoding
from domainlm.qa.students.likelihood import best_label, continuation_ids, label_log_likelihoods
from domainlm.qa.students.student import get_method
from student_helpers import ITEMS, save_tiny, student_config

LIKELIHOOD = Decoding(answer_scoring="likelihood")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("models") / "llama", "llama")


def naive_log_likelihood(student, item, label, rationale="") -> float:
    """One unpadded row: the sum over the continuation of log-softmax at the token that follows."""
    prompt = student.encode(item, train=False).features["input_ids"]
    prompt += student._ids(" " + rationale) if rationale else []
    target = continuation_ids(student, label)
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logprobs = torch.log_softmax(student.model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(prompt) + i - 1, token].item() for i, token in enumerate(target))


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_scores_are_exact_log_likelihoods_and_every_answer_is_a_label(llama, method):
    student = get_method(method).build(student_config(llama, method, eval_batch_size=2))
    student.model.eval()
    scores = label_log_likelihoods(student, ITEMS)  # 9 rows in batches of 6, right-padded
    for item, row in zip(ITEMS, scores, strict=True):
        assert set(row) == set(LABELS) and all(value < 0 for value in row.values())
        if method == "lora":  # prefix tuning's virtual tokens are not in the naive forward
            for label in LABELS:
                assert row[label] == pytest.approx(naive_log_likelihood(student, item, label), abs=1e-4)
    assert label_log_likelihoods(student, ITEMS[1:2])[0] == pytest.approx(scores[1], abs=1e-4)  # alone
    predictions = student.predict(ITEMS, LIKELIHOOD)
    assert all(p.matched and p.predicted in LABELS and isinstance(p.text, str) for p in predictions)
    rationales = [rationale(p.text) for p in predictions]
    assert [p.scores for p in predictions] == label_log_likelihoods(student, ITEMS, rationales)
    assert [p.predicted for p in predictions] == [best_label(p.scores) for p in predictions]
    if method == "lora":
        with_rationale = label_log_likelihoods(student, ITEMS[:1], ["the score is given"])[0]
        naive = naive_log_likelihood(student, ITEMS[0], "maybe", "the score is given")
        assert with_rationale["maybe"] == pytest.approx(naive, abs=1e-4)


def test_the_rationale_is_the_text_before_the_answer_sentence():
    assert rationale("It binds. The answer to the question\ngiven the context is yes.") == "It binds."
    assert rationale("  no sentence at all ") == "no sentence at all" and rationale("") == ""


def test_answer_scoring_is_checked_and_never_reaches_generate():
    with pytest.raises(InputError, match="answer scoring"):
        Decoding(answer_scoring="vote")
    assert "answer_scoring" not in LIKELIHOOD.generate_kwargs() and LIKELIHOOD.name == "likelihood"
    assert Decoding().name == "beam5-rp2" and Decoding.greedy().answer_scoring == "parse"
    assert best_label({"yes": -1.0, "no": -1.0, "maybe": -2.0}) == "yes"  # ties: LABELS order


def test_a_student_of_the_sentence_alone_learns_no_long_answer_and_scores_without_generating(llama):
    paper = get_method("lora").build(student_config(llama, "lora"))
    short = get_method("lora").build(student_config(llama, "lora", long_answer=False))
    sentence = continuation_ids(short, "yes")
    target = [t for t in short.encode(ITEMS[0], train=True).features["labels"] if t != -100]
    assert target == sentence  # item "a" has a long answer; only its sentence is learned
    assert len(paper.encode(ITEMS[0], train=True).features["labels"]) > len(sentence)
    assert short.answer_room == max(len(continuation_ids(short, label)) for label in LABELS)

    def no_generation(*args, **kwargs):
        raise AssertionError("a sentence-alone student generates nothing before likelihood scoring")

    short.generate = no_generation
    predictions = short.predict(ITEMS, LIKELIHOOD)
    assert [p.scores for p in predictions] == label_log_likelihoods(short, ITEMS)
    assert all(p.matched and p.predicted == best_label(p.scores) for p in predictions)
