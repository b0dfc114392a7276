"""A generative function tag (<Translate>): loss on the target only, and generation from tagged prompts
equal to a greedy loop over full forward passes, batched or not (tiny in-process models)."""

import pytest
import torch

from domainlm.engine.model import TaggedModel
from domainlm.engine.template import Template, prompt_of
from domainlm.errors import DomainLMError, InputError
from tiny_models import tiny_model

TEMPLATE = "Input: <{src}> {source} Output: <{tgt}> <Translate> {target}"
PROMPTS = [
    "Input: <FR> bonjour le monde Output: <EN> <Translate>",
    "Input: <EN> the protein Output: <FR> <Translate>",
    "Input: <EN> the value of the score is given Output: <FR> <Translate>",
]


def translator(family="llama"):
    tm = TaggedModel(*tiny_model(family))
    for tag in ("EN", "FR"):
        tm.add_tag(tag)
    tm.add_tag("Translate", "function")  # no head: the LM head writes the target
    torch.manual_seed(1)
    with torch.no_grad():  # tags off their shared initial value, so each prompt continues differently
        for p in tm.tag_vectors.values():
            p.add_(torch.randn_like(p))
    return tm


def greedy_by_full_forwards(tm, prompt, steps):
    batch = tm.encode([prompt])
    out = []
    for _ in range(steps):
        with torch.no_grad():
            token = int(tm(**batch, return_logits=True).logits[0, -1].argmax())
        if token == tm.tokenizer.eos_token_id:
            break
        out.append(token)
        grow = {"input_ids": token, "tag_index": -1, "attention_mask": 1, "segment_ids": 0}
        grow["position_ids"] = batch["position_ids"].shape[1]
        for key, value in grow.items():
            batch[key] = torch.cat([batch[key], torch.tensor([[value]])], dim=1)
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_generation_equals_a_greedy_loop_and_batching_changes_nothing(family):
    tm = translator(family)
    settings = {"max_new_tokens": 6, "stop_at_newline": False, "details": True}
    batched = tm.generate(PROMPTS, **settings)
    alone = [tm.generate(p, **settings).token_ids[0] for p in PROMPTS]
    manual = [greedy_by_full_forwards(tm, p, 6) for p in PROMPTS]
    assert batched.token_ids == alone == manual
    assert batched.texts == [tm.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in manual]


def test_beam_search_batched_equals_unbatched():
    tm = translator()
    settings = {"max_new_tokens": 5, "num_beams": 3, "stop_at_newline": False, "details": True}
    batched = tm.generate(PROMPTS, **settings)
    alone = [tm.generate(p, **settings) for p in PROMPTS]
    assert batched.token_ids == [a.token_ids[0] for a in alone]


def test_the_loss_covers_the_target_tokens_and_eos_only():
    tm = translator()
    parts = Template(TEMPLATE).render({"src": "FR", "tgt": "EN", "source": "bonjour", "target": "the answer"})
    batch = tm.encode([parts], lm_labels=True)
    labels = batch["lm_labels"][0].tolist()
    ids = batch["input_ids"][0].tolist()
    target = tm.tokenizer("the answer", add_special_tokens=False)["input_ids"]
    assert [t for t in labels if t != -100] == target + [tm.tokenizer.eos_token_id]
    assert ids[-len(target) - 1 :] == target + [tm.tokenizer.eos_token_id]
    out = tm(**batch)
    assert out.predictions is None and torch.isfinite(out.loss) and out.loss is out.task_loss
    out.loss.backward()
    assert tm.tag_vectors["Translate"].grad.abs().sum() > 0
    # the prompt (no target) gets no EOS: generation continues from the tag
    prompt = tm.encode([prompt_of(parts)])["input_ids"][0].tolist()
    assert prompt == ids[: len(prompt)] and len(prompt) == len(ids) - len(target) - 1


def test_tag_fields_name_each_rows_language_tags():
    t = Template(TEMPLATE)
    assert t.function_tag == "Translate" and t.tag_fields == ["src", "tgt"] and t.domain_tags == []
    parts = t.render({"src": "DE", "tgt": "IT", "source": "Hallo Welt", "target": "Ciao mondo"})
    assert [p.value for p in parts if p.kind == "tag"] == ["DE", "IT", "Translate"]
    assert [p.domain for p in parts if p.kind == "data"] == ["DE", None]
    assert t.row_domain_tags({"src": "DE", "tgt": "IT"}) == ["DE", "IT"]
    with pytest.raises(InputError, match="must start with a letter"):
        t.render({"src": "1x", "tgt": "IT", "source": "a", "target": "b"})
    with pytest.raises(InputError, match="must be a name"):
        Template("Input: <X> {source} <{tgt}>")


def test_an_unknown_language_tag_is_named_with_the_known_ones():
    tm = translator()
    parts = Template(TEMPLATE).render({"src": "XX", "tgt": "EN", "source": "a", "target": "b"}, item=3)
    with pytest.raises(InputError, match=r"unknown tag <XX>; known tags: \['EN', 'FR', 'Translate'\]"):
        tm.generate([prompt_of(parts)])


def test_newline_ends_a_generation():
    from domainlm.engine.generation import _until_stop

    assert _until_stop([5, 6, 9, 7], eos=3, newlines={9}, pad=0) == [5, 6, 9]
    assert _until_stop([5, 3, 7], eos=3, newlines={9}, pad=0) == [5]
    assert _until_stop([5, 6, 0, 0], eos=3, newlines={9}, pad=0) == [5, 6]


def test_an_encoder_cannot_generate_and_generative_tags_refuse_isolation():
    from domainlm.engine.tag_training import configure
    from domainlm.training import TrainConfig

    bert = TaggedModel(*tiny_model("bert"))
    with pytest.raises(DomainLMError, match="no LM head"):
        bert.generate(["the answer"])
    tm = translator()
    with pytest.raises(DomainLMError, match="need a head"):
        configure(tm, TrainConfig(isolate=True), "Translate", ["EN", "FR"])
    setup = configure(tm, TrainConfig(), "Translate", ["EN", "FR"])
    assert not setup.isolate and set(tm.trainable_parameters()) == {"tag_vectors.Translate"}
