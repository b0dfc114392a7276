import json
from collections import Counter

import pytest

from domainlm.errors import InputError
from domainlm.qa import LABELS, QAItem, load_pubmedqa, load_qa_dir, read_qa_jsonl, write_qa_jsonl


@pytest.fixture(scope="module")
def pqal(data_dir):
    raw = json.loads((data_dir / "pubmedqa" / "ori_pqal.json").read_text())
    truth = json.loads((data_dir / "pubmedqa" / "test_ground_truth.json").read_text())
    return raw, truth


def test_official_test_ids_equal_ground_truth(data_dir, pqal):
    raw, truth = pqal
    splits = load_pubmedqa(data_dir, "official", fold=0)
    assert {item.id for item in splits.test} == set(truth)
    assert all(item.label == truth[item.id] for item in splits.test)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (450, 50, 500)


def test_official_folds_disjoint_stratified_reproducible(data_dir, pqal):
    raw, truth = pqal
    rest_ids = set(raw) - set(truth)
    devs = [load_pubmedqa(data_dir / "pubmedqa", "official", fold=k).dev for k in range(10)]
    dev_ids = [{item.id for item in dev} for dev in devs]
    assert all(len(ids) == 50 for ids in dev_ids)
    assert set().union(*dev_ids) == rest_ids  # ten disjoint folds of 50 cover all 500
    overall = Counter(raw[i]["final_decision"] for i in rest_ids)
    for dev in devs:
        counts = Counter(item.label for item in dev)
        for label in LABELS:  # stratified: each fold's share within one item of the overall share
            assert abs(counts[label] - overall[label] / 10) <= 1
    again = load_pubmedqa(data_dir, "official", fold=3)
    assert [item.id for item in again.dev] == [item.id for item in devs[3]]
    train_ids = {item.id for item in again.train}
    assert not train_ids & dev_ids[3] and train_ids | dev_ids[3] == rest_ids


def test_paper_split_is_file_order(data_dir, pqal):
    raw, _ = pqal
    order = list(raw)
    splits = load_pubmedqa(data_dir, "paper")
    assert [i.id for i in splits.train] == order[:450]
    assert [i.id for i in splits.dev] == order[450:500]
    assert [i.id for i in splits.test] == order[500:]
    first = splits.train[0]
    assert first.context == "\n".join(raw[order[0]]["CONTEXTS"])
    assert (
        first.long_answer == raw[order[0]]["LONG_ANSWER"] and first.label == raw[order[0]]["final_decision"]
    )


def test_bad_split_arguments(data_dir, tmp_path):
    with pytest.raises(InputError, match="unknown split"):
        load_pubmedqa(data_dir, "random")
    with pytest.raises(InputError, match="fold"):
        load_pubmedqa(data_dir, "official", fold=10)
    with pytest.raises(InputError, match="PubMedQA not found"):
        load_pubmedqa(tmp_path)


def test_jsonl_roundtrip_and_dir(tmp_path):
    items = [
        QAItem("a", "Is it?", "Some context.", "yes", "Because."),
        QAItem("a-rw0", "Is it really?", "Some context.", "yes", None, source="rewrite", parent_id="a"),
    ]
    write_qa_jsonl(tmp_path / "train.jsonl", items)
    write_qa_jsonl(tmp_path / "dev.jsonl", [QAItem("b", "Q?", "C.", "no")])
    write_qa_jsonl(tmp_path / "test.jsonl", [QAItem("c", "Q?", "C.", "maybe")])
    assert read_qa_jsonl(tmp_path / "train.jsonl") == items
    splits = load_qa_dir(tmp_path)
    assert [i.id for i in splits.train] == ["a", "a-rw0"] and splits.test[0].label == "maybe"


def test_user_file_aliases(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"question": "Q1?", "context": ["p1", "p2"], "answer": "Yes"})
        + "\n\n"
        + json.dumps({"id": 7, "question": "Q2?", "contexts": "c", "final_decision": "maybe"})
        + "\n"
    )
    first, second = read_qa_jsonl(path)
    assert (first.id, first.context, first.label) == ("line1", "p1\np2", "yes")
    assert (second.id, second.label, second.source) == ("7", "maybe", "original")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [{"id": "a", "question": "Q?", "label": "yes"}],
            r"line 1: missing or empty field\(s\) \['context'\]",
        ),
        ([{"id": "a", "question": "Q?", "context": "c"}], r"line 1: missing or empty field\(s\) \['label'\]"),
        (
            [{"id": "a", "question": "Q?", "context": "c", "label": "probably"}],
            "line 1: unknown label 'probably'",
        ),
        (
            [{"id": "a", "question": "Q?", "context": "c", "label": "no"}] * 2,
            r"line 2: duplicate id 'a' \(first on line 1\)",
        ),
        ([], "holds no items"),
    ],
)
def test_bad_qa_files(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(InputError, match=message) as err:
        read_qa_jsonl(path)
    assert str(path) in str(err.value)


def test_malformed_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "question": "Q?", "context": "c", "label": "no"}\n{oops\n')
    with pytest.raises(InputError, match="line 2: not valid JSON"):
        read_qa_jsonl(path)


def test_qa_dir_leakage_and_missing_files(tmp_path):
    write_qa_jsonl(tmp_path / "train.jsonl", [QAItem("a", "Q?", "C.", "yes")])
    with pytest.raises(InputError, match="missing"):
        load_qa_dir(tmp_path)
    write_qa_jsonl(tmp_path / "dev.jsonl", [QAItem("b", "Q?", "C.", "no")])
    write_qa_jsonl(tmp_path / "test.jsonl", [QAItem("a", "Q?", "C.", "yes")])
    with pytest.raises(InputError, match="both train and test"):
        load_qa_dir(tmp_path)
