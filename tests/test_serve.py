"""`domainlm serve` answers the real openai client and enforces its key; augment runs over it and locally."""

import socket
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from domainlm.augment import AugmentConfig, HFTeacher, make_teacher, run_augment
from domainlm.augment.local_model import LocalChatModel
from domainlm.augment.prompts import load_template
from domainlm.augment.server import create_app
from domainlm.io import read_jsonl_objects
from domainlm.qa import QAItem, QASplits
from tiny_models import tiny_model

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    model, tokenizer = tiny_model("llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(model_dir):
    """The app on a free loopback port, with a required API key."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(LocalChatModel(model_dir, device="cpu"), "tiny", api_key=KEY)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1"
    uv.should_exit = True
    thread.join(timeout=10)


def test_openai_client_chat_and_models(server):
    client = openai.OpenAI(base_url=server, api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    messages = [{"role": "user", "content": "is the answer yes or no"}]
    response = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, n=2, seed=3)
    assert len(response.choices) == 2 and all(isinstance(c.message.content, str) for c in response.choices)
    assert response.usage.prompt_tokens > 5 and 0 < response.usage.completion_tokens <= 12
    again = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, n=2, seed=3)
    assert [c.message.content for c in again.choices] == [c.message.content for c in response.choices]
    greedy = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0)
    assert greedy.usage.completion_tokens <= 4 and greedy.choices[0].finish_reason in {"stop", "length"}


def test_openai_client_completions_continue_a_raw_prompt_and_honour_stop(server, model_dir):
    client = openai.OpenAI(base_url=server, api_key=KEY, max_retries=0)
    local = LocalChatModel(model_dir, device="cpu")
    candidates = [f"Question: is drug {k} safe?\nAnswer:" for k in range(20)]
    runs = {p: local.generate_encoded(local.encode_text(p, 8), temperature=0) for p in candidates}
    # a prompt whose greedy completion runs its 8 tokens (random weights sometimes write end-of-sequence)
    prompt = next(p for p, g in runs.items() if g.completion_tokens == 8 and len(g.texts[0]) > 5)
    expected = runs[prompt]
    free = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
    assert free.object == "text_completion" and free.choices[0].text == expected.texts[0]
    assert free.usage.prompt_tokens == expected.prompt_tokens and free.usage.completion_tokens == 8
    stop = free.choices[0].text[2:5]
    cut = client.completions.create(model="tiny", prompt=[prompt], max_tokens=8, temperature=0, stop=[stop])
    assert cut.choices[0].text == free.choices[0].text[: free.choices[0].text.find(stop)].strip()
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens < 8
    for bad, param in (
        (dict(prompt=[prompt, prompt]), "prompt"),
        (dict(prompt=prompt, stop=["a"] * 5), "stop"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="tiny", max_tokens=2, **bad)
        assert e.value.body["param"] == param


def test_keys_and_errors(server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server, api_key="sk-wrong", max_retries=0).models.list()
    assert httpx.get(f"{server}/models").status_code == 401  # no Authorization header at all
    client = openai.OpenAI(base_url=server, api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], n=0)
    with pytest.raises(openai.BadRequestError, match="context is 2048"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "the " * 3000}])


def splits():
    items = [QAItem(f"q{k}", f"is the drug {k} safe", "the molecule is", "yes", "yes") for k in range(2)]
    return QASplits(items, [QAItem("d", "q", "c", "no")], [QAItem("t", "q", "c", "no")])


def test_augment_through_serve_and_in_process(server, model_dir, tmp_path, monkeypatch):
    """A tiny random model writes garbage, so replies end as rejects; the plumbing is what is tested."""
    monkeypatch.setenv("DOMAINLM_TEST_KEY", KEY)
    teacher = make_teacher(server, api_key_env="DOMAINLM_TEST_KEY")
    config = AugmentConfig("rewrite", "tiny", n=2, max_tokens=8, concurrency=2)
    over_http = run_augment(splits(), teacher, config, tmp_path / "http", show_progress=False)
    assert over_http["counts"]["requests_sent"] == 4 and over_http["usage"]["completion_tokens"] > 0
    assert (
        over_http["rejects_by_reason"]["unparseable"] + over_http["counts"]["generated"].get("rewrite", 0)
        == 4
    )
    assert KEY not in (tmp_path / "http" / "manifest.json").read_text()

    local = run_augment(splits(), HFTeacher(str(model_dir)), config, tmp_path / "local", show_progress=False)
    assert local["teacher"].startswith("hf:") and local["counts"]["requests_sent"] == 4
    assert local["cost"]["estimated_usd"] == 0.0
    assert sum(local["rejects_by_reason"].values()) + local["counts"]["generated"].get("rewrite", 0) == 4


def test_fewshot_templates_go_to_the_completions_api_with_their_stop_sequence(
    server, model_dir, tmp_path, monkeypatch
):
    """Base-model teachers: the few-shot prompt is sent raw (no chat template), over HTTP and in process
    alike; greedy replies match, so both paths sent the same prompt and stop sequence."""
    config = AugmentConfig("combined", "tiny", max_tokens=6, temperature=0, prompt_style="fewshot")
    monkeypatch.setenv("DOMAINLM_TEST_KEY", KEY)
    teacher = make_teacher(server, api_key_env="DOMAINLM_TEST_KEY")
    over_http = run_augment(splits(), teacher, config, tmp_path / "http", show_progress=False)
    local = run_augment(splits(), HFTeacher(str(model_dir)), config, tmp_path / "local", show_progress=False)
    model = LocalChatModel(model_dir, device="cpu")
    prompts = [
        load_template(m, style="fewshot").render(item) for m in ("rewrite", "new") for item in splits().train
    ]
    expected = sum(model.encode_text(p, 6).length for p in prompts)  # raw text, BOS added
    for manifest in (over_http, local):
        assert manifest["counts"]["requests_sent"] == 4 and manifest["usage"]["prompt_tokens"] == expected
    assert (
        local["usage"] == over_http["usage"] and local["rejects_by_reason"] == over_http["rejects_by_reason"]
    )
    replies = [
        sorted(
            (r["parent_id"], r["mode"], r["reply"])
            for _, r in read_jsonl_objects(tmp_path / path / "rejects.jsonl")
        )
        for path in ("http", "local")
    ]
    assert replies[0] == replies[1] and len(replies[0]) == 4  # a random model's text parses as nothing
