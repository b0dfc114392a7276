"""A teacher whose replies fail a third of the time (429, 500, stalls, garbage and error bodies with 200):
every fault is retried and counted, and the run completes. No crash on any malformed body."""

import asyncio
import re
import threading

import pytest

from domainlm.augment import AugmentConfig, make_teacher, run_augment
from domainlm.augment.teachers import MalformedReply, parse_completion
from domainlm.qa import QAItem, QASplits
from fake_openai import FakeResponse, FakeTeacherServer, field_in_prompt, paraphrase

ITEMS = 20
HTML = FakeResponse(raw=b"<html>502 Bad Gateway</html>", headers={"Content-Type": "text/html"})
NO_CHOICES = FakeResponse(raw=b'{"object": "chat.completion", "choices": []}')
ERROR_200 = FakeResponse(raw=b'{"error": {"message": "model overloaded", "type": "server_error"}}')
EMPTY = FakeResponse(content="")
GARBLED = FakeResponse(raw=b'{"choices": [tru')
NOT_AN_OBJECT = FakeResponse(raw=b"[]")
MALFORMED = 6  # of the faults below


def splits() -> QASplits:
    train = [
        QAItem(f"i{k}", f"Does factor {k} matter?", f"Context {k}.", "yes", "It does.") for k in range(ITEMS)
    ]
    return QASplits(train, [QAItem("d", "Dev?", "c", "no")], [QAItem("t", "Test?", "c", "no")])


@pytest.mark.parametrize(
    "body, message",
    [
        (b"<html>oops</html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON list"),
        (b'{"choices": null}', "no choices"),
        (b'{"choices": ["text"]}', "no message content or text"),
        (b'{"choices": [{"text": 7}]}', "no message content or text"),
        (b'{"choices": [{"message": {"content": null}}]}', "no message content"),
        (b'{"error": "quota"}', "error with HTTP 200: quota"),
        (b'{"choices": [{"message": {"content": "  "}}]}', "empty content"),
    ],
)
def test_malformed_bodies_are_retryable(body, message):
    with pytest.raises(MalformedReply, match=message):
        parse_completion(body)


def test_a_completions_body_is_read_from_its_text():
    assert parse_completion(b'{"object": "text_completion", "choices": [{"text": " yes"}]}').text == " yes"


def test_odd_usage_reads_as_zero():
    body = b'{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": "7"}}'
    reply = parse_completion(body)
    assert (reply.text, reply.prompt_tokens, reply.completion_tokens) == ("hi", 0, 0)


def test_a_third_of_replies_fail_and_the_run_completes(tmp_path):
    release = threading.Event()  # a stalled request hangs until the test ends, far beyond the client timeout
    stall = FakeResponse()

    def faults(k: int) -> list[FakeResponse]:
        return {
            0: [FakeResponse(status=429, headers={"Retry-After": "0"}), HTML],
            3: [FakeResponse(status=500), NO_CHOICES, ERROR_200],
            6: [stall, EMPTY],
            10: [GARBLED],
            13: [NOT_AN_OBJECT],
            16: [stall],
        }.get(k, [])

    def respond(body: dict, attempt: int) -> FakeResponse:
        k = int(re.search(r"factor (\d+)", field_in_prompt(body, "Question")).group(1))
        scripted = faults(k)
        if attempt < len(scripted):
            if scripted[attempt] is stall:
                release.wait()
            return scripted[attempt]
        return paraphrase(body)

    config = AugmentConfig("rewrite", "fake-teacher", concurrency=4, backoff=0.01, max_retries=4)
    with FakeTeacherServer(respond) as server:
        try:
            teacher = make_teacher(server.url, timeout=1.0)
            manifest = run_augment(splits(), teacher, config, tmp_path, show_progress=False)
        finally:
            release.set()
    counts = manifest["counts"]
    faulty = sum(len(faults(k)) for k in range(ITEMS))
    assert manifest["status"] == "complete" and counts["failed_requests"] == 0
    assert counts["retries"] == faulty == 10 and counts["malformed_replies"] == MALFORMED
    assert counts["requests_sent"] == ITEMS + faulty and faulty / counts["requests_sent"] == pytest.approx(
        1 / 3
    )
    assert counts["generated"] == {"rewrite": ITEMS}


def test_an_answer_that_stays_empty_is_a_reject_not_a_failure(tmp_path):
    config = AugmentConfig("rewrite", "fake-teacher", backoff=0.0, max_retries=2)
    with FakeTeacherServer(lambda body, attempt: EMPTY) as server:
        manifest = run_augment(
            QASplits(splits().train[:2], [], []),
            make_teacher(server.url),
            config,
            tmp_path,
            show_progress=False,
        )
    counts = manifest["counts"]
    assert manifest["status"] == "complete" and counts["failed_requests"] == 0
    assert counts["malformed_replies"] == 2 * 3 and counts["requests_sent"] == 6
    assert manifest["rejects_by_reason"]["empty"] == 2


def test_parse_completion_is_what_the_teacher_uses():
    async def ask(body: bytes):
        with FakeTeacherServer(lambda b, a: FakeResponse(raw=body)) as server:
            teacher = make_teacher(server.url)
            try:
                return await teacher.complete(
                    [{"role": "user", "content": "hi"}],
                    model="fake-teacher",
                    temperature=0,
                    max_tokens=4,
                    seed=0,
                )
            finally:
                await teacher.close()

    with pytest.raises(MalformedReply, match="not JSON"):
        asyncio.run(ask(b"Service unavailable"))
