"""Quality filters on teacher replies: each drop is counted under its reason in the manifest, and every kept
item says where it came from (source id, mode, teacher, model, prompt hash)."""

import hashlib
import json
import re

import pytest

from domainlm.augment import AugmentConfig, judge_reply, make_teacher, run_augment
from domainlm.augment.replies import REASONS, Filters, NearDuplicates, jaccard, words
from domainlm.errors import InputError
from domainlm.qa import QAItem, QASplits, load_qa_dir
from fake_openai import FakeResponse, FakeTeacherServer, field_in_prompt

PARENT = QAItem(
    "p",
    "Does aspirin lower the risk of stroke in elderly patients?",
    "In a cohort of elderly patients, taking aspirin daily reduced the chance of a stroke.",
    "yes",
    "It does.",
)


def reply(question, label="yes", answer="A fresh answer."):
    return json.dumps({"question": question, "answer": answer, "label": label})


@pytest.mark.parametrize(
    ("text", "mode", "reason"),
    [
        ("", "new", "empty"),
        ("   \n", "rewrite", "empty"),
        ("I think the answer is yes.", "new", "unparseable"),
        (reply("Is it safe?", label="probably"), "new", "bad_label"),  # the answer is not yes/no/maybe
        (reply("Is it safe?", label="no"), "rewrite", "label_changed"),  # a rewrite must keep the label
        (reply(" ".join(["word"] * 65) + "?"), "new", "too_long"),
        (reply("Is it safe?", answer=" ".join(["so"] * 257)), "new", "too_long"),
        (reply("does aspirin lower the risk of stroke in elderly patients"), "new", "copy"),
        (reply("Does aspirin lower the risk of a stroke in elderly patients?"), "rewrite", "near_copy"),
        (reply("Does telephone counselling lower perinatal mortality?"), "new", "off_topic"),  # 1 of 5 words
    ],
)
def test_each_reply_filter(text, mode, reason):
    assert judge_reply(text, PARENT, mode, 0).reason == reason


def test_a_real_paraphrase_is_kept_and_thresholds_are_settable():
    paraphrase = reply("In older patients, is the chance of a stroke reduced by taking aspirin?")
    assert judge_reply(paraphrase, PARENT, "rewrite", 0).item is not None
    near = reply("Does aspirin lower the risk of a stroke in elderly patients?")
    assert judge_reply(near, PARENT, "rewrite", 0, Filters(near_duplicate=1.0)).item is not None
    long_question = reply(" ".join(["stroke"] * 65) + "?")
    assert judge_reply(long_question, PARENT, "new", 0, Filters(max_question_words=100)).item is not None
    off_topic = reply("Does telephone counselling lower perinatal mortality?")
    assert judge_reply(off_topic, PARENT, "new", 0, Filters(min_grounding=0.2)).item is not None
    assert judge_reply(off_topic, PARENT, "new", 0, Filters(min_grounding=0)).item is not None
    assert "20% of the question's content words" in judge_reply(off_topic, PARENT, "new", 0).detail
    for bad in (
        {"near_duplicate": 0},
        {"near_duplicate": 1.5},
        {"max_answer_words": 0},
        {"min_grounding": 2},
    ):
        with pytest.raises(InputError):
            Filters(**bad)
    with pytest.raises(InputError, match="near_duplicate"):
        AugmentConfig("new", "m", near_duplicate=0)


def test_jaccard_and_the_near_duplicate_index():
    a, b = set(words("Does X cause Y?")), set(words("does x cause y in mice"))
    assert jaccard(a, b) == pytest.approx(4 / 6) and jaccard(set(), set()) == 1.0
    index = NearDuplicates(0.8)
    index.add("Is vitamin D linked to fractures in older women?", "first")
    assert index.match("is VITAMIN d linked to fractures in older women") == ("duplicate", "first", 1.0)
    reason, first, similarity = index.match("Is vitamin D linked to hip fractures in older women?")
    assert (reason, first) == ("near_duplicate", "first") and similarity == pytest.approx(9 / 10)
    assert index.match("Does coffee protect the liver?") is None
    # sizes that cannot reach the threshold are never compared, but every size that can is
    brute = NearDuplicates(0.5)
    brute.add("a b c d", "x")
    assert brute.match("a b") == ("near_duplicate", "x", 0.5) and brute.match("a") is None


def scripted(body: dict, attempt: int) -> FakeResponse:
    """Replies by item number, chosen to hit the cross-item filters and to be kept."""
    k = int(re.search(r"item (\d+)", field_in_prompt(body, "Question"), re.I).group(1))
    label = field_in_prompt(body, "Final decision")
    questions = {
        0: "Is smoking tied to the onset of bladder cancer in men?",
        1: "Is smoking tied to the onset of bladder cancer in men?",  # exact duplicate of item 0's reply
        2: "Is smoking tied to the onset of bladder cancer in older men?",  # near item 0's (9/10 words)
        3: "Do night shifts raise the rate of metabolic syndrome in nurses?",  # near an original (item 4's)
        4: "After hip surgery, does walking early speed recovery?",
    }
    return FakeResponse(reply(questions[k], label=label))


def test_duplicates_across_items_and_provenance_in_the_manifest(tmp_path):
    originals = [
        "Does item 0 concern smoking?",
        "Does item 1 concern smoking too?",
        "Does item 2 concern cancer?",
        "Does item 3 concern shifts?",
        "Item 4: do night shifts raise the rate of metabolic syndrome in nurses?",
    ]
    context = (
        "Smoking is tied to the onset of bladder cancer in older men; night shifts raise the rate of "
        "metabolic syndrome in nurses; after hip surgery, walking early speeds recovery."
    )
    train = [QAItem(f"o{k}", q, f"Context {k}. {context}", "yes", "Yes.") for k, q in enumerate(originals)]
    splits = QASplits(train, [QAItem("d", "Dev?", "c", "no")], [QAItem("t", "Test?", "c", "no")])
    config = AugmentConfig("rewrite", "fake-teacher", concurrency=2, backoff=0.01)
    with FakeTeacherServer(scripted) as server:
        manifest = run_augment(splits, make_teacher(server.url), config, tmp_path, show_progress=False)
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert {r["parent_id"]: r["reason"] for r in rejects} == {
        "o1": "duplicate",
        "o2": "near_duplicate",
        "o3": "near_duplicate",
    }
    assert "near the question of o0-rewrite0" in next(r["detail"] for r in rejects if r["parent_id"] == "o2")
    assert "near the question of o4 " in next(r["detail"] for r in rejects if r["parent_id"] == "o3")
    assert set(manifest["rejects_by_reason"]) == set(REASONS)
    assert {k: v for k, v in manifest["rejects_by_reason"].items() if v} == {
        "duplicate": 1,
        "near_duplicate": 2,
    }
    assert manifest["params"]["near_duplicate"] == 0.8 and manifest["counts"]["generated"] == {"rewrite": 2}

    kept = [item for item in load_qa_dir(tmp_path).train if item.source != "original"]
    assert [item.id for item in kept] == ["o0-rewrite0", "o4-rewrite0"]
    sha = manifest["templates"]["rewrite"]["sha256"]
    for item in kept:
        p = item.provenance
        assert (p["source_id"], p["mode"], p["sample"]) == (item.parent_id, "rewrite", 0)
        assert (p["teacher"], p["model"], p["template_sha256"]) == (server.url, "fake-teacher", sha)
        assert re.fullmatch(r"[0-9a-f]{64}", p["prompt_sha256"]) and p["prompt_sha256"] != sha
    originals_out = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()][:5]
    assert all("provenance" not in row for row in originals_out)  # originals keep the plain format


def test_prompt_hash_is_the_hash_of_the_messages_the_teacher_saw(tmp_path):
    seen = []

    def respond(body, attempt):
        seen.append(body["messages"])
        return FakeResponse(reply("Was the stroke risk of elderly patients reduced in the aspirin cohort?"))

    splits = QASplits([PARENT], [QAItem("d", "Dev?", "c", "no")], [QAItem("t", "Test?", "c", "no")])
    with FakeTeacherServer(respond) as server:
        run_augment(
            splits,
            make_teacher(server.url),
            AugmentConfig("new", "fake-teacher"),
            tmp_path,
            show_progress=False,
        )
    (item,) = [i for i in load_qa_dir(tmp_path).train if i.source == "new"]
    expected = hashlib.sha256(json.dumps(seen[0], sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert item.provenance["prompt_sha256"] == expected
