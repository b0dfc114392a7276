"""The augment pipeline against a scripted OpenAI-compatible server on 127.0.0.1, plus reply checks."""

import asyncio
import json
import re
import socket
import subprocess
import sys

import pytest

from domainlm.augment import AugmentConfig, extract_json, judge_reply, make_teacher, run_augment
from domainlm.augment.pipeline import RateLimiter, backoff_delay
from domainlm.augment.prompts import load_template
from domainlm.errors import InputError
from domainlm.qa import QAItem, QASplits, load_qa_dir, write_qa_jsonl
from fake_openai import FakeResponse, FakeTeacherServer, field_in_prompt, paraphrase

LABEL_CYCLE = ("yes", "no", "maybe")


def make_items(count: int, prefix: str = "i") -> list[QAItem]:
    return [
        QAItem(
            f"{prefix}{k}",
            f"Does factor {k} change outcome {k}?",
            f"Context {k}: factor {k} may change outcome {k}.",
            LABEL_CYCLE[k % 3],
            f"Long answer {k}.",
        )
        for k in range(count)
    ]


def make_splits(count: int = 10) -> QASplits:
    return QASplits(make_items(count), make_items(2, "d"), make_items(3, "t"))


def write_data_dir(path, count):
    splits = make_splits(count)
    for name, items in splits.as_dict().items():
        write_qa_jsonl(path / f"{name}.jsonl", items)
    return path


def reply(question, label, answer="A rewritten answer."):
    return json.dumps({"question": question, "answer": answer, "label": label})


def scripted(body: dict, attempt: int) -> FakeResponse:
    """Faults and bad replies keyed by (item number, sample) read back from the prompt and seed."""
    question = field_in_prompt(body, "Question")
    label = field_in_prompt(body, "Final decision")
    item, sample = int(re.search(r"factor (\d+)", question).group(1)), body["seed"]
    faults = {
        (0, 0): [FakeResponse(status=429, headers={"Retry-After": "0"})],
        (1, 0): [FakeResponse(status=500), FakeResponse(status=503)],
        (2, 0): [FakeResponse(delay=4.0)],  # longer than the client timeout (2 s)
        (3, 0): [FakeResponse(raw=b'{"choices": [tru')],  # a garbled HTTP body
    }
    if attempt < len(faults.get((item, sample), [])):
        return faults[(item, sample)][attempt]
    bad = {
        (4, 0): "Sure! The answer is yes.",
        (5, 0): reply("A fresh question five?", "perhaps"),
        (5, 1): reply("Another question five?", "no" if label != "no" else "yes"),
        (6, 0): reply(question.upper() + "  ", label),
        (7, 0): reply("The same question?", label),
        (7, 1): reply("the SAME question", label),
        (8, 0): "Here it is:\n```json\n" + reply("Fenced question eight?", label) + "\n```",
        (9, 0): reply("", label),
    }
    if (item, sample) in bad:
        return FakeResponse(bad[(item, sample)])
    return paraphrase(body)


EXPECTED_REJECTS = {
    "unparseable": 1,
    "bad_label": 1,
    "label_changed": 1,
    "copy": 1,
    "duplicate": 1,
    "empty": 1,
}


def config(**kw):
    # min_grounding 0: the scripted questions are about nothing; off_topic has its own test
    base = dict(
        mode="rewrite", model="fake-teacher", n=2, concurrency=4, backoff=0.01, seed=0, min_grounding=0
    )
    return AugmentConfig(**{**base, **kw})


def test_faults_and_bad_replies(tmp_path):
    splits = make_splits()
    out = tmp_path / "out"
    with FakeTeacherServer(scripted) as server:
        manifest = run_augment(
            splits, make_teacher(server.url, timeout=2.0), config(), out, show_progress=False
        )
        assert server.requests == 20 + 5  # 20 samples plus one retry per scripted fault attempt
        counts = manifest["counts"]
        assert counts["retries"] == 5 and counts["requests_sent"] == 25 and counts["failed_requests"] == 0
        assert {k: v for k, v in manifest["rejects_by_reason"].items() if v} == EXPECTED_REJECTS
        assert counts["generated"] == {"rewrite": 14} and counts["train_total"] == 24
        train = load_qa_dir(out).train
        generated = {item.id: item for item in train if item.source == "rewrite"}
        rejected = {"i4-rewrite0", "i5-rewrite0", "i5-rewrite1", "i6-rewrite0", "i7-rewrite1", "i9-rewrite0"}
        assert set(generated) == {f"i{k}-rewrite{s}" for k in range(10) for s in range(2)} - rejected
        assert generated["i8-rewrite0"].question == "Fenced question eight?"
        assert all(g.label == splits.train[int(g.parent_id[1:])].label for g in generated.values())
        assert [i.id for i in train[:10]] == [i.id for i in splits.train]
        rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
        assert {(r["parent_id"], r["sample"], r["reason"]) for r in rejects} == {
            ("i4", 0, "unparseable"),
            ("i5", 0, "bad_label"),
            ("i5", 1, "label_changed"),
            ("i6", 0, "copy"),
            ("i7", 1, "duplicate"),
            ("i9", 0, "empty"),
        }
        assert manifest["usage"]["prompt_tokens"] > 0 and manifest["templates"]["rewrite"]["sha256"]

        first = {name: (out / name).read_bytes() for name in ("train.jsonl", "rejects.jsonl", "dev.jsonl")}
        again = run_augment(splits, make_teacher(server.url, timeout=2.0), config(), out, show_progress=False)
        assert server.requests == 25  # a rerun of a finished job sends nothing
        assert again["counts"]["replies_from_cache"] == 20 and again["usage_this_run"]["prompt_tokens"] == 0
        assert {name: (out / name).read_bytes() for name in first} == first


def test_modes_limit_and_no_originals(tmp_path):
    splits = make_splits(6)
    with FakeTeacherServer() as server:
        teacher = make_teacher(server.url)
        manifest = run_augment(
            splits,
            teacher,
            config(mode="combined", n=1, limit=4, include_originals=False),
            tmp_path,
            show_progress=False,
        )
        assert server.requests == 8
    train = load_qa_dir(tmp_path).train
    assert manifest["counts"]["generated"] == {"rewrite": 4, "new": 4}
    assert sorted(i.id for i in train) == sorted(f"i{k}-{m}0" for k in range(4) for m in ("rewrite", "new"))
    assert all(i.parent_id and i.context == splits.train[int(i.parent_id[1:])].context for i in train)
    assert manifest["params"]["limit"] == 4 and manifest["params"]["include_originals"] is False


@pytest.mark.parametrize(("status", "attempts"), [(500, 3), (400, 1)])
def test_failed_requests_are_capped_and_kept_as_rejects(tmp_path, status, attempts):
    with FakeTeacherServer(lambda body, attempt: FakeResponse(status=status)) as server:
        manifest = run_augment(
            make_splits(2),
            make_teacher(server.url),
            config(n=1, max_retries=2),
            tmp_path,
            show_progress=False,
        )
        assert server.requests == 2 * attempts  # 5xx: retried up to max_retries; 400: never retried
    assert manifest["status"] == "incomplete" and manifest["counts"]["failed_requests"] == 2
    assert manifest["rejects_by_reason"]["request_failed"] == 2


def test_cache_from_another_template_is_refused(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    with FakeTeacherServer() as server:
        run_augment(make_splits(2), make_teacher(server.url), config(), tmp_path / "out", show_progress=False)
        (prompts / "rewrite.txt").write_text("Rephrase: {question} ({label}). Reply as JSON.")
        with pytest.raises(InputError, match="another prompt template"):
            run_augment(
                make_splits(2),
                make_teacher(server.url),
                config(prompt_dir=str(prompts)),
                tmp_path / "out",
                show_progress=False,
            )
        # a fresh output directory takes the user template, and records it
        manifest = run_augment(
            make_splits(2),
            make_teacher(server.url),
            config(prompt_dir=str(prompts)),
            tmp_path / "other",
            show_progress=False,
        )
    assert manifest["templates"]["rewrite"]["text"].startswith("Rephrase: {question}")


def test_bad_template_fields(tmp_path):
    (tmp_path / "new.txt").write_text("[user]\nWrite about {topic}.")
    with pytest.raises(InputError, match=r"unknown field\(s\) \['topic'\]"):
        run_augment(
            make_splits(1),
            make_teacher("http://127.0.0.1:9/v1"),
            config(mode="new", prompt_dir=str(tmp_path)),
            tmp_path / "out",
            show_progress=False,
        )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[prompt]\nQ: {question}\nA:\n[stop]\n"\\n"\nnot json', r"rewrite.txt, line 6: \[stop\] entry 'not"),
        ('[prompt]\nQ: {question}\n[stop]\n""', "line 4"),  # an empty stop sequence
        ("[prompt]\nQ: {question}\n[user]\nand a chat turn", "no \\[system\\] or \\[user\\]"),
        ('[user]\nQ: {question}\n[stop]\n"###"', "belong to \\[prompt\\] templates|not chat ones"),
    ],
)
def test_bad_completion_templates_name_the_file(tmp_path, text, message):
    (tmp_path / "rewrite.txt").write_text(text)
    with pytest.raises(InputError, match=message) as e:
        load_template("rewrite", tmp_path)
    assert str(tmp_path / "rewrite.txt") in str(e.value)


def test_completion_template_renders_text_and_stop_sequences(tmp_path):
    (tmp_path / "rewrite.txt").write_text(
        '[prompt]\nQuestion: {question}\nRewritten:\n[stop]\n"###"\n"\\n\\n"\n'
    )
    template = load_template("rewrite", tmp_path)
    item = make_items(1)[0]
    assert template.stop == ("###", "\n\n")
    assert template.render(item) == f"Question: {item.question}\nRewritten:"
    for mode in ("rewrite", "new"):  # the packaged few-shot templates end where the teacher's layout starts
        packaged = load_template(mode, style="fewshot")
        assert packaged.stop == ("###",) and packaged.render(item).endswith(":")
    with pytest.raises(InputError, match="unknown prompt style 'json'"):
        config(prompt_style="json")


@pytest.mark.parametrize(
    ("text", "question"),
    [
        ('{"question": "Q?", "answer": "A.", "label": "yes"}', "Q?"),
        ('```json\n{"question": "Q?", "answer": "A.", "label": "yes"}\n```', "Q?"),
        ('Sure:\n{"question": "Q?", "answer": "A.", "label": "Yes."} Hope it helps', "Q?"),
        ("no json here", None),
        ('["a list"]', None),
    ],
)
def test_extract_json(text, question):
    data = extract_json(text)
    assert (data or {}).get("question") == question


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Question: Does X lower Y?\nAnswer: It does; the trial\nshowed a drop.\nFinal decision: yes.",
            ("Does X lower Y?", "It does; the trial showed a drop.", "yes"),
        ),
        (
            "**Question:** Is it safe?\n**Answer:** Mostly.\n**Label:** Maybe",
            ("Is it safe?", "Mostly.", "maybe"),
        ),
        (  # the source item echoed first, then the teacher's own: each field's last occurrence counts
            "Question: Is it?\nAnswer: Because.\n\nQuestion: Was it ever?\nAnswer: Not in this cohort.\n"
            "Final decision: no",
            ("Was it ever?", "Not in this cohort.", "no"),
        ),
    ],
)
def test_replies_without_json_are_read_from_labelled_lines(text, expected):
    parent = QAItem("p", "Is it?", "X may lower Y; it is safe.", "no", "Because.")
    verdict = judge_reply(text, parent, "new", 0)
    assert (verdict.item.question, verdict.item.long_answer, verdict.item.label) == expected
    prose = judge_reply("The final response is a JSON object.", QAItem("p", "Is it?", "c", "no"), "new", 0)
    assert prose.reason == "unparseable" and "Question:" in prose.detail


def test_judge_reply_labels():
    parent = QAItem("p", "Is it?", "ctx", "no", "Because.")
    ok = judge_reply(reply("Is that so?", "NO."), parent, "rewrite", 3)
    assert ok.item.id == "p-rewrite3" and ok.item.label == "no" and ok.item.parent_id == "p"
    assert judge_reply(reply("Is that so?", "maybe"), parent, "new", 0).item.label == "maybe"
    assert judge_reply(reply("Is that so?", "maybe"), parent, "rewrite", 0).reason == "label_changed"
    assert judge_reply(reply("Is that so?", "no", "because"), parent, "rewrite", 0).reason == "copy"


def test_backoff_grows_and_honours_retry_after():
    assert 0.5 <= backoff_delay(0, 1.0) <= 1.0 and 4.0 <= backoff_delay(3, 1.0) <= 8.0
    assert backoff_delay(0, 0.01, retry_after=2.0) == 2.0
    assert backoff_delay(20, 1.0) <= 60.0


def test_config_rejects_bad_values():
    with pytest.raises(InputError, match="unknown mode"):
        AugmentConfig(mode="paraphrase", model="m")
    with pytest.raises(InputError, match="concurrency"):
        AugmentConfig(mode="new", model="m", concurrency=0)
    with pytest.raises(InputError, match="price"):
        AugmentConfig(mode="new", model="m", price_in=1.0)


def test_cost_from_table_and_override(tmp_path):
    with FakeTeacherServer(models=("gpt-4o-mini",)) as server:
        m = run_augment(
            make_splits(1),
            make_teacher(server.url),
            config(model="gpt-4o-mini"),
            tmp_path / "a",
            show_progress=False,
        )
        o = run_augment(
            make_splits(1),
            make_teacher(server.url),
            config(model="gpt-4o-mini", price_in=1000.0, price_out=0.0),
            tmp_path / "b",
            show_progress=False,
        )
    usage = m["usage"]
    assert m["cost"]["estimated_usd"] == pytest.approx(
        (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.6) / 1e6, abs=1e-6
    )
    assert o["cost"]["estimated_usd"] == pytest.approx(usage["prompt_tokens"] / 1000, abs=1e-6)


def run_cli(*args, timeout=60):
    """The real command in a subprocess; stderr with rich's line wrapping undone."""
    result = subprocess.run(
        [sys.executable, "-c", "from domainlm.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    result.stderr = " ".join(result.stderr.split())
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_refused_connection_fails_fast(tmp_path):
    data = write_data_dir(tmp_path / "data", 3)
    result = run_cli(
        "augment",
        "--mode",
        "rewrite",
        "--teacher",
        f"http://127.0.0.1:{free_port()}/v1",
        "--model",
        "m",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    )
    # "cannot connect" is raised by the first refused request while nothing has ever answered (teachers.py),
    # not after retries; no wall-clock bound, which a loaded machine broke (52 s against 30)
    assert result.returncode == 2 and "cannot connect to the teacher" in result.stderr
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_cli_unknown_model_and_success(tmp_path):
    data = write_data_dir(tmp_path / "data", 3)
    with FakeTeacherServer() as server:
        args = ["augment", "--teacher", server.url, "--data", str(data), "--no-progress", "--mode", "rewrite"]
        result = run_cli(*args, "--model", "no-such-model", "--out", str(tmp_path / "bad"))
        assert result.returncode == 2 and "404 for model 'no-such-model'" in result.stderr
        assert server.requests >= 1
        result = run_cli(*args, "--model", "fake-teacher", "--out", str(tmp_path / "good"), "--n", "2")
    assert result.returncode == 0, result.stderr
    assert load_qa_dir(tmp_path / "good").train[-1].id == "i2-rewrite1"
    manifest = json.loads((tmp_path / "good" / "manifest.json").read_text())
    labels = manifest["counts"]["labels"]
    assert labels["rewrite"] == {
        k: 2 * v for k, v in labels["original"].items()
    }  # each rewrite keeps its label
    shown = ", ".join(f"{k} {v}" for k, v in labels["rewrite"].items())
    assert f"generated: rewrite 6 ({shown}))" in " ".join(result.stderr.split())  # counts, not a dict
    assert manifest["data"]["format"] == "qa-jsonl-dir" and manifest["counts"]["train_total"] == 9


def test_cli_bad_inputs(tmp_path):
    data = write_data_dir(tmp_path / "data", 2)
    (data / "train.jsonl").write_text('{"id": "x", "question": "Q?", "context": "c", "label": "sometimes"}\n')
    args = ["augment", "--mode", "new", "--teacher", "http://127.0.0.1:9/v1", "--model", "m"]
    result = run_cli(*args, "--data", str(data), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "train.jsonl, line 1: unknown label 'sometimes'" in result.stderr
    result = run_cli(*args, "--data", str(data), "--out", str(data))
    assert result.returncode == 2 and "--out must differ from --data" in result.stderr
    write_data_dir(data, 2)
    result = run_cli(*args, "--api-key-env", "DOMAINLM_TEST_UNSET_KEY", "--data", str(data), "--out", "x")
    assert result.returncode == 2 and "DOMAINLM_TEST_UNSET_KEY" in result.stderr


def test_rate_limiter_spaces_request_starts():
    slept = []

    async def record(seconds):
        slept.append(seconds)

    limiter = RateLimiter(rpm=120, clock=lambda: 100.0, sleep=record)  # a frozen clock: all calls at once

    async def three():
        for _ in range(3):
            await limiter.wait()

    asyncio.run(three())
    assert slept == pytest.approx([0.0, 0.5, 1.0])


def test_the_cache_knows_a_local_teacher_by_its_url_less_the_port():
    from domainlm.augment.reply_cache import request_key, teacher_identity

    assert teacher_identity("http://127.0.0.1:43231/v1/") == "http://127.0.0.1/v1"
    assert teacher_identity("http://[::1]:8000/v1") == "http://[::1]/v1"
    assert teacher_identity("https://api.example.com:8443/v1") == "https://api.example.com:8443/v1"
    assert teacher_identity("hf:/models/tiny") == "hf:/models/tiny"
    ask = ([{"role": "user", "content": "q"}], {"temperature": 0.7}, 0)
    assert request_key("http://localhost:1/v1", "m", *ask) == request_key("http://localhost:2/v1", "m", *ask)
    assert request_key("http://localhost:1/v1", "m", *ask) != request_key("http://localhost:1/v1", "n", *ask)
