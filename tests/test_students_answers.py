"""The hard-match answer parser over generations a student really produces, and the prompt/target builders."""

import pytest

from domainlm.qa import QAItem
from domainlm.qa.students.answers import ANSWER_PHRASE, answer_sentence, parse_answer
from domainlm.qa.students.prompt_fit import FittedPrompt, fit_prompt, target_text
from tiny_models import tiny_tokenizer

P = ANSWER_PHRASE

CASES = [
    (f"{P} yes.", "yes", True),
    (f"{P} no.", "no", True),
    (f"{P} maybe", "maybe", True),
    (f"{P} Yes, because the trial was large.", "yes", True),
    (f"{P.upper()} NO!", "no", True),
    ("The Answer To The Question Given The Context Is Maybe.", "maybe", True),
    (f"{P} no .", "no", True),  # word-level tokenizers decode "no." as "no ."
    (f"{P}\nyes", "yes", True),
    ("the answer to  the question\ngiven the context is  no", "no", True),
    (f'{P}: "yes"', "yes", True),
    (f"Results were mixed. {P} yes. On reflection, {P} no.", "no", True),  # repeated: the last one counts
    (f"{P} no. {P} maybe.", "maybe", True),
    (f"{P} not sure.", "maybe", False),
    (f"{P} nothing conclusive", "maybe", False),  # "no" must be a whole word
    (f"{P} yesterday", "maybe", False),
    ("no.", "maybe", False),  # a bare label is not the phrase
    ("Yes, the drug works.", "maybe", False),
    ("not sure", "maybe", False),
    ("the answer is yes", "maybe", False),
    (f"{P}", "maybe", False),  # phrase cut off before the label
    ("", "maybe", False),
]


@pytest.mark.parametrize(("text", "label", "matched"), CASES)
def test_parse_answer(text, label, matched):
    parsed = parse_answer(text)
    assert (parsed.label, parsed.matched) == (label, matched)


def test_answer_sentence_round_trips():
    for label in ("yes", "no", "maybe"):
        assert parse_answer(answer_sentence(label)).label == label
        assert answer_sentence(label) == f"the answer to the question given the context is {label}."


def test_target_is_long_answer_then_sentence():
    item = QAItem("1", "q?", "c", "no", long_answer="The drug failed.")
    assert target_text(item) == "The drug failed. the answer to the question given the context is no."
    assert target_text(QAItem("2", "q?", "c", "yes")) == answer_sentence("yes")


def test_fit_prompt_cuts_the_context_never_the_question():
    tok = tiny_tokenizer("llama")
    question = "is the protein binding the drug ?"
    item = QAItem("1", question, " ".join(["the molecule score"] * 40), "yes")
    fitted = fit_prompt(tok, item, 40)
    assert fitted.truncated
    assert len(tok(fitted.text)["input_ids"]) <= 40
    assert question in fitted.text and fitted.text.endswith("Answer:")
    # The kept context is a prefix of the original, as written.
    kept = fitted.text.split("Context: ")[1].rsplit("\nAnswer:")[0]
    assert item.context.startswith(kept) and len(kept) > 0

    short = QAItem("2", question, "the molecule", "no")
    assert fit_prompt(tok, short, 40) == FittedPrompt(
        f"Question: {question}\nContext: the molecule\nAnswer:", False
    )


def test_fit_prompt_can_keep_the_end_of_the_context():
    """PubMedQA's results come last: keep="end" cuts the start of the context instead of its end."""
    tok = tiny_tokenizer("llama")
    question = "is the protein binding the drug ?"
    context = " ".join(["the molecule score"] * 30) + " the protein binding"
    fitted = fit_prompt(tok, QAItem("1", question, context, "yes"), 40, keep="end")
    assert fitted.truncated and len(tok(fitted.text)["input_ids"]) <= 40
    kept = fitted.text.split("Context: ")[1].rsplit("\nAnswer:")[0]
    assert context.endswith(kept) and kept.endswith("the protein binding") and len(kept) < len(context)
    with pytest.raises(ValueError, match="keep"):
        fit_prompt(tok, QAItem("1", question, context, "yes"), 40, keep="middle")
