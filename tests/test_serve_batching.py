"""Dynamic batching in `domainlm serve`: concurrent requests share one generate call, and each gets exactly
the answer (and token counts) it would get alone. No timing: the batch window is far longer than the test,
and a batch closes the moment it is full."""

import asyncio
from types import SimpleNamespace

import httpx
import pytest
import torch

from domainlm.augment.batcher import Batcher, BatchSettings
from domainlm.augment.local_model import LocalChatModel, RowStops
from domainlm.augment.server import create_app
from domainlm.errors import InputError
from tiny_models import tiny_tokenizer

FOREVER_MS = 600_000  # a batch closes when full, never by the clock, in these tests
QUESTIONS = ["is the answer yes", "the drug is safe", "is the molecule a drug or a protein", "yes no maybe"]
MAX_TOKENS = [6, 3, 9, 1]  # different lengths and limits: padding and cutting are both exercised


@pytest.fixture(scope="module")
def chat_model(model_dir):
    model = LocalChatModel(model_dir("llama"), device="cpu")
    calls = []
    generate = model.model.generate
    model.model.generate = lambda *a, **kw: calls.append(kw["input_ids"].shape[0]) or generate(*a, **kw)
    model.generate_calls = calls  # rows of each real `generate` call
    return model


def prompts(chat_model):
    return [
        chat_model.encode([{"role": "user", "content": q}], m)
        for q, m in zip(QUESTIONS, MAX_TOKENS, strict=True)
    ]


def test_batched_greedy_answers_equal_unbatched_ones_in_one_generate_call(chat_model):
    alone = [chat_model.generate_encoded(p, temperature=0, n=1) for p in prompts(chat_model)]
    chat_model.generate_calls.clear()
    batcher = Batcher(chat_model, BatchSettings(window_ms=FOREVER_MS, max_batch_size=len(QUESTIONS)))
    try:
        futures = [batcher.submit(p, temperature=0, seed=k) for k, p in enumerate(prompts(chat_model))]
        batched = [f.result(timeout=120) for f in futures]
    finally:
        batcher.close()
    assert batched == alone  # texts, prompt and completion token counts, finish reasons
    assert [g.completion_tokens for g in batched] == MAX_TOKENS  # random weights never stop early
    assert chat_model.generate_calls == [len(QUESTIONS)] and batcher.calls == 1


def test_greedy_and_sampled_requests_share_a_call_and_a_seed_repeats_whatever_the_neighbours(chat_model):
    p = prompts(chat_model)
    alone = chat_model.generate_encoded(p[1], temperature=0.7, n=2, seed=1)
    assert alone == chat_model.generate_encoded(p[1], temperature=0.7, n=2, seed=1)  # seeded: it repeats
    assert alone.completion_tokens == 2 * MAX_TOKENS[1]
    batcher = Batcher(chat_model, BatchSettings(window_ms=FOREVER_MS, max_batch_size=5))
    chat_model.generate_calls.clear()
    try:
        futures = [
            batcher.submit(p[0], temperature=0),
            batcher.submit(p[1], temperature=0.7, n=2, seed=1),  # two sequences
            batcher.submit(p[2], temperature=1.3, top_p=0.5, seed=7),
            batcher.submit(p[3], temperature=0.7, seed=2),
        ]
        results = [f.result(timeout=120) for f in futures]
    finally:
        batcher.close()
    assert chat_model.generate_calls == [5] and batcher.sizes == {4: 1}  # one call, a row per sequence
    assert [len(r.texts) for r in results] == [1, 2, 1, 1]
    assert results[1] == alone  # the same answers as alone, beside other prompts, seeds and temperatures
    assert results[0] == chat_model.generate_encoded(p[0], temperature=0)


def test_row_sampler_draws_each_row_from_its_own_stream_and_keeps_top_p():
    import torch

    from domainlm.augment.local_model import RowSampler

    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 3)
    generators = [torch.Generator().manual_seed(s) for s in (0, 0, 1)]
    drawn = RowSampler([1.0, 1.0, 0.0], [1.0, 0.5, 1.0], generators)(None, scores)
    assert torch.equal(drawn[2], scores[2])  # temperature 0: greedy, untouched
    for row in drawn[:2]:
        assert torch.isfinite(row).sum() == 1  # the drawn token is the row's only choice
    assert torch.isfinite(drawn[1]).nonzero().item() == 0  # top-p 0.5 leaves the most likely token alone
    firsts = [
        RowSampler([1.0], [1.0], [torch.Generator().manual_seed(3)])(None, scores[:1]).argmax().item()
        for _ in range(2)
    ]
    assert firsts[0] == firsts[1]
    top1 = RowSampler([5.0] * 3, [1.0] * 3, [torch.Generator().manual_seed(s) for s in range(3)], top_k=1)
    assert top1(None, scores).argmax(-1).tolist() == [0, 0, 0]  # top-k 1: the most likely token, however hot


def test_concurrent_http_requests_share_one_generate_call(chat_model):
    app = create_app(chat_model, "tiny", batching=BatchSettings(window_ms=FOREVER_MS, max_batch_size=3))
    bodies = [
        {"model": "tiny", "messages": [{"role": "user", "content": q}], "max_tokens": m, "temperature": 0}
        for q, m in zip(QUESTIONS[:3], MAX_TOKENS, strict=False)
    ]

    async def ask_all():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))

    async def stats():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            return (await client.get("/stats")).json()

    responses = asyncio.run(ask_all())
    expected = {"generate_calls": 1, "requests_per_call": {"3": 1}, "queue_peak": 3, "abandoned": 0}
    assert asyncio.run(stats()) == expected
    app.state.batcher.close()
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert app.state.batcher.calls == 1 and app.state.batcher.sizes == {3: 1}
    for response, body in zip(responses, bodies, strict=True):
        alone = chat_model.generate(body["messages"], max_tokens=body["max_tokens"], temperature=0)
        data = response.json()
        assert data["choices"][0]["message"]["content"] == alone.texts[0]
        assert data["usage"] == {
            "prompt_tokens": alone.prompt_tokens,
            "completion_tokens": alone.completion_tokens,
            "total_tokens": alone.prompt_tokens + alone.completion_tokens,
        }


class Recorder:
    """A model that records the batches it is given; `context_length` small enough to force splits."""

    context_length = 100

    def __init__(self, fail: bool = False):
        self.batches, self.fail = [], fail

    def generate_batch(self, prompts, *, n, temperature, top_p, seed):
        if self.fail:
            raise RuntimeError("out of memory")
        self.batches.append([p.name for p in prompts])
        return [p.name for p in prompts]

    def generate_encoded(self, prompt, **kw):
        return self.generate_batch([prompt], n=[kw["n"]], temperature=0, top_p=1, seed=None)[0]


def fake_prompt(name, length, max_tokens):
    return SimpleNamespace(name=name, length=length, max_tokens=max_tokens)


def test_a_batch_is_cut_to_what_fits_the_context_and_errors_reach_every_request():
    model = Recorder()
    batcher = Batcher(model, BatchSettings(window_ms=FOREVER_MS, max_batch_size=3))
    # padded, a and b need 60 + 30 positions; adding c (length 80) would need 80 + 30 > 100
    futures = [
        batcher.submit(fake_prompt(*p), temperature=0) for p in (("a", 60, 10), ("b", 20, 30), ("c", 80, 5))
    ]
    assert [f.result(timeout=60) for f in futures] == ["a", "b", "c"]
    batcher.close()
    assert model.batches == [["a", "b"], ["c"]]

    failing = Batcher(Recorder(fail=True), BatchSettings(window_ms=FOREVER_MS, max_batch_size=2))
    futures = [failing.submit(fake_prompt(name, 1, 1), temperature=0) for name in "xy"]
    for future in futures:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result(timeout=60)
    failing.close()


def test_a_model_without_generate_batch_is_served_one_request_at_a_time():
    class Single:
        def generate_encoded(self, prompt, **kw):
            return prompt.name

    batcher = Batcher(Single(), BatchSettings(window_ms=FOREVER_MS, max_batch_size=8))
    futures = [batcher.submit(fake_prompt(name, 1, 1), temperature=0) for name in "abc"]
    assert [f.result(timeout=60) for f in futures] == ["a", "b", "c"]  # no wait for a batch that never fills
    batcher.close()
    assert batcher.calls == 3


def test_batch_settings_are_checked_and_come_from_the_cli(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from domainlm.augment import server as server_module
    from domainlm.cli import _register, app

    with pytest.raises(InputError, match="max_batch_size"):
        BatchSettings(max_batch_size=0)
    with pytest.raises(InputError, match="window"):
        BatchSettings(window_ms=-1)
    seen = {}
    monkeypatch.setattr(server_module, "serve", lambda model, **kw: seen.update(kw))
    _register()
    args = ["serve", "--model", str(tmp_path), "--batch-window-ms", "5", "--max-batch-size", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen["batching"] == BatchSettings(window_ms=5.0, max_batch_size=4)


def test_a_request_whose_client_left_before_its_batch_is_dropped():
    from domainlm.augment.batcher import ClientGone

    model = Recorder()
    batcher = Batcher(model, BatchSettings(window_ms=FOREVER_MS, max_batch_size=2))

    async def gone():
        return True

    async def ask():
        return await batcher.generate(fake_prompt("left", 1, 1), gone=gone, poll_s=0.01, temperature=0)

    with pytest.raises(ClientGone):
        asyncio.run(ask())  # its batch waits for company, and the client goes first
    stayed = batcher.submit(fake_prompt("stayed", 1, 1), temperature=0)  # fills the batch
    assert stayed.result(timeout=60) == "stayed"
    batcher.close()
    assert model.batches == [["stayed"]] and batcher.abandoned == 1


def test_stop_strings_end_each_row_on_its_own_and_are_not_returned(chat_model):
    p = prompts(chat_model)
    free = chat_model.generate_encoded(chat_model.encode_text(QUESTIONS[2], 9), temperature=0)
    text = free.texts[0]
    assert free.completion_tokens == 9 and len(text) > 6  # random weights write no end-of-sequence
    head = chat_model.generate_encoded(chat_model.encode_text(QUESTIONS[2], 4), temperature=0).texts[0]
    assert text.startswith(head)
    stop = head.rstrip()[-2:]  # written within the first 4 tokens
    stopped = chat_model.encode_text(QUESTIONS[2], 9, stop=(stop, "never written \u2603"))
    alone = chat_model.generate_encoded(stopped, temperature=0)
    assert alone.texts == [text[: text.find(stop)].strip()] and alone.finish_reasons == ["stop"]
    assert alone.completion_tokens <= 4  # generation ended early, not just the text
    # beside a prompt without stop strings, each row keeps its own
    both = chat_model.generate_batch([stopped, p[0]], temperature=0)
    assert both[0] == alone and both[1] == chat_model.generate_encoded(p[0], temperature=0)


def test_row_stops_see_a_stop_late_in_a_long_completion_and_across_tokens():
    """Only a tail of each completion is decoded per step; a stop written after 60 tokens, as two tokens,
    still ends its row at the very step it is complete, and a row without stops never ends."""
    tok = tiny_tokenizer()
    prompt = tok("the question")["input_ids"]
    written = tok(" ".join(["drug"] * 60 + ["is", "the", "answer"]), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + written] * 2)
    stops = RowStops([("is the",), ()], tok, start=len(prompt))
    ended = []
    for made in range(1, len(written) + 1):
        ended.append(stops(ids[:, : len(prompt) + made], None).tolist())
    assert stops.at == [62, None] and stops.tail < 20  # "the" is the 62nd token
    assert ended[60] == [False, False] and ended[61] == [True, False] and ended[-1] == [True, False]
    # a byte-level tokenizer may spend a token on each byte of "→" (3 in UTF-8): the tail covers them all
    assert RowStops([("→",)], tok, start=0).tail == 3 + RowStops.SLACK
