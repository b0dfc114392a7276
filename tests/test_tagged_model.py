"""The tag engine's battery, run over several model families (tiny in-process models, no downloads)."""

import pytest
import torch

from domainlm.engine.model import TaggedModel
from domainlm.engine.tag_specs import initial_tag
from domainlm.errors import DomainLMError, IncompatibleTagsError, InputError
from tiny_models import tiny_model

FAMILIES = ["llama", "gpt2", "bert", "qwen2"]
QED = "The SMILES of the molecule is <SMILES> CC(=O)O. QED is <QED>"
TWO = "Drug one <SMILES> CCO and drug two <SMILES> c1ccccc1N. Score <QED>"


def tagged(family, seed=0):
    model, tok = tiny_model(family, seed=seed)
    tm = TaggedModel(model, tok)
    tm.add_tag("SMILES", "domain", char_level=True)
    tm.add_tag("QED", "function", head="regression", label_mean=0.5, label_std=0.2)
    with torch.no_grad():  # a non-trivial head so predictions depend on the input
        tm.heads["QED"].linear.weight.normal_()
    return tm


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def test_only_tags_and_heads_train_and_base_is_untouched(family):
    tm = tagged(family)
    before = {k: v.clone() for k, v in tm.base.state_dict().items()}
    assert set(tm.trainable_parameters()) == {
        "tag_vectors.SMILES",
        "tag_vectors.QED",
        "heads.QED.linear.weight",
        "heads.QED.linear.bias",
    }
    opt = torch.optim.AdamW(tm.trainable_parameters().values(), lr=1e-2)
    for _ in range(3):
        out = tm(**tm.encode([QED, TWO], labels=[0.3, 0.7]))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    after = tm.base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(tm.tag_vectors["SMILES"], initial_tag(tm.base.get_input_embeddings().weight, 10))


def test_plain_text_matches_the_bare_model(family):
    tm = tagged(family)
    text = "the molecule is c c o and the answer is yes"
    batch = tm.encode([text])
    ref = tm.tokenizer([text], return_tensors="pt")
    assert batch["input_ids"].tolist() == ref["input_ids"].tolist()
    with torch.no_grad():
        if tm.causal:
            ours = tm(**batch, return_logits=True).logits
            theirs = tm.base(**ref).logits
        else:
            ours = tm.hidden_states(
                batch["input_ids"], batch["attention_mask"], batch["tag_index"], batch["position_ids"]
            )
            theirs = tm.base(**ref).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_tags_sit_at_their_markers(family):
    tm = tagged(family)
    batch = tm.encode([TWO])
    ids, slots = batch["input_ids"][0], batch["tag_index"][0]
    p = tm.specs["SMILES"].length
    # two SMILES spans and one QED tag, each p consecutive slots, in order
    runs = [int(s) for s in slots if s >= 0]
    assert runs == list(range(p)) + list(range(p)) + list(range(p, 2 * p))
    embeds = tm.embed(batch["input_ids"], batch["tag_index"])[0]
    table = tm.tag_table()
    for pos in (slots >= 0).nonzero().flatten().tolist():
        torch.testing.assert_close(embeds[pos], table[slots[pos]])
    assert batch["readout_index"][0] == len(ids) - 1 - len(tm.encoder.suffix)
    assert (ids[slots >= 0] == tm.encoder.placeholder).all()


@pytest.mark.parametrize("isolate", [False, True])
def test_left_and_right_padding_agree_with_unbatched(family, isolate):
    tm = tagged(family)
    texts = [QED, TWO, "<SMILES> C <QED>"]
    with torch.no_grad():
        single = torch.cat([tm(**tm.encode([t], isolate=isolate)).predictions for t in texts])
        for side in ("left", "right"):
            batch = tm.encode(texts, isolate=isolate, padding_side=side)
            mask = batch["attention_mask"]
            if side == "left":
                assert (mask[:, -1] == 1).all()
            else:
                assert (mask[:, 0] == 1).all()
            real_pos = [batch["position_ids"][i][mask[i].bool()].tolist() for i in range(len(texts))]
            if not isolate:
                assert all(p == list(range(len(p))) for p in real_pos)
            torch.testing.assert_close(tm(**batch).predictions, single, rtol=1e-4, atol=1e-5)


def test_isolated_spans_do_not_see_earlier_text(family):
    tm = tagged(family)
    a = "the answer is yes <SMILES> CCO. QED is <QED>"
    b = "no no no no no maybe <SMILES> CCO. QED is <QED>"
    with torch.no_grad():

        def span_states(text, isolate):
            batch = tm.encode([text], isolate=isolate)
            h = tm.hidden_states(
                batch["input_ids"],
                batch["attention_mask"],
                batch["tag_index"],
                batch["position_ids"],
                batch["segment_ids"],
                batch["function_segment"],
                isolate,
            )
            seg = batch["segment_ids"][0]
            return h[0][seg == 1]

        torch.testing.assert_close(span_states(a, True), span_states(b, True), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(span_states(a, False), span_states(b, False), atol=1e-4)
        # the function tag still sees everything
        assert not torch.allclose(
            tm(**tm.encode([a], isolate=True)).predictions, tm(**tm.encode([b], isolate=True)).predictions
        )


def test_lm_labels_skip_tags_and_padding():
    tm = tagged("llama")
    batch = tm.encode([QED, "<SMILES> C <QED>"], lm_labels=True)
    lm = batch["lm_labels"]
    assert (lm[batch["tag_index"] >= 0] == -100).all()
    assert (lm[batch["attention_mask"] == 0] == -100).all()
    real = (batch["tag_index"] < 0) & (batch["attention_mask"] == 1)
    assert torch.equal(lm[real], batch["input_ids"][real])
    # the loss (output layer on labelled positions only) is the mean over the full logits' labelled tokens
    out = tm(**batch, return_logits=True)
    full = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].flatten(0, 1), lm[:, 1:].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(out.lm_loss, full)
    torch.testing.assert_close(tm(**batch).lm_loss, full)


def test_encoder_refuses_lm_loss():
    tm = tagged("bert")
    with pytest.raises(DomainLMError, match="no LM head"):
        tm(**tm.encode([QED]), lm_labels=torch.zeros(1, 5, dtype=torch.long))


def test_initialisation_follows_the_paper():
    tm = tagged("llama")
    emb = tm.base.get_input_embeddings().weight.detach()
    tag = tm.tag_vectors["SMILES"].detach()
    mean = emb.mean(0)
    expected = mean / mean.norm() * emb.norm(dim=1).mean()
    assert tag.shape == (10, emb.shape[1])
    torch.testing.assert_close(tag, expected.expand(10, -1))
    torch.testing.assert_close(tag.norm(dim=1), emb.norm(dim=1).mean().expand(10))


def test_save_load_merge_and_refusal(family, tmp_path):
    tm = tagged(family)
    with torch.no_grad():
        tm.tag_vectors["SMILES"].add_(0.3)
    tm.save_tags(tmp_path / "qed")
    expected = tm(**tm.encode([QED, TWO])).predictions

    fresh = TaggedModel(*tiny_model(family))
    fresh.load_tags(tmp_path / "qed")
    torch.testing.assert_close(fresh(**fresh.encode([QED, TWO])).predictions, expected, rtol=0, atol=0)

    other = TaggedModel(*tiny_model(family))
    other.add_tag("Protein", "domain", char_level=True)
    other.add_tag("Descriptor", "function", head="classification", n_classes=3)
    other.save_tags(tmp_path / "protein")
    merged = TaggedModel(*tiny_model(family))
    merged.load_tags(tmp_path / "qed", tmp_path / "protein")
    assert set(merged.specs) == {"SMILES", "QED", "Protein", "Descriptor"}
    assert merged.heads["Descriptor"].linear.out_features == 3

    # same name, different values: an error unless the caller says which wins
    clash = TaggedModel(*tiny_model(family))
    clash.add_tag("SMILES", "domain", char_level=True)
    clash.save_tags(tmp_path / "clash")
    with pytest.raises(DomainLMError, match="different values"):
        TaggedModel(*tiny_model(family)).load_tags(tmp_path / "qed", tmp_path / "clash")
    win = TaggedModel(*tiny_model(family))
    win.load_tags(tmp_path / "qed", tmp_path / "clash", on_conflict={"SMILES": str(tmp_path / "qed")})
    torch.testing.assert_close(win.tag_vectors["SMILES"], tm.tag_vectors["SMILES"])

    stranger = TaggedModel(*tiny_model(family, seed=1))
    with pytest.raises(IncompatibleTagsError, match="made for base model"):
        stranger.load_tags(tmp_path / "qed")


def test_bfloat16_model_keeps_fp32_tags():
    model, tok = tiny_model("llama")
    tm = TaggedModel(model.to(torch.bfloat16), tok)
    tm.add_tag("SMILES", char_level=True)
    tm.add_tag("QED", "function", head="regression")
    out = tm(**tm.encode([QED], labels=[0.4]))
    out.loss.backward()
    assert tm.tag_vectors["QED"].dtype == torch.float32 and tm.tag_vectors["QED"].grad is not None


def test_bad_inputs_are_named():
    tm = tagged("llama")
    with pytest.raises(InputError, match="not a number"):
        tm.encode([QED], labels=["abc"])
    with pytest.raises(InputError, match="finite"):
        tm.encode([QED], labels=[float("nan")])
    with pytest.raises(InputError, match="same function tag"):
        tm.encode(["<SMILES> CCO"], labels=[0.1])
    tm.add_tag("Kind", "function", head="classification", classes=["a", "b"])
    with pytest.raises(InputError, match="not one of the classes"):
        tm.encode(["<SMILES> C <Kind>"], labels=["c"])
    gpt = tagged("gpt2")
    with pytest.raises(InputError, match="positions"):
        gpt.encode(["<SMILES> " + "C" * 2000 + " <QED>"])


def test_a_tag_starts_at_the_norm_of_the_token_vectors_the_model_sees():
    """Gemma scales its embedding rows by sqrt(hidden) in the embedding module; tags must match that."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from domainlm.engine.model import TaggedModel
    from tiny_models import tiny_tokenizer

    config = Gemma3TextConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        sliding_window=16,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    tm = TaggedModel(Gemma3ForCausalLM(config), tiny_tokenizer("llama"))
    tm.add_tag("X")
    seen = tm.base.get_input_embeddings()(torch.arange(256)).norm(dim=-1).mean()
    assert float(tm.tag_vectors["X"].norm(dim=-1).mean()) == pytest.approx(float(seen), rel=1e-4)


def test_a_tag_can_start_as_the_embeddings_of_words():
    tm = tagged("llama")
    tm.add_tag("FR", "domain", length=5, init_text="Fr")
    ids = tm.tokenizer("Fr", add_special_tokens=False)["input_ids"]
    emb = tm.base.get_input_embeddings().weight.detach()
    vectors = tm.tag_vectors["FR"].detach()
    assert len(ids) == 2  # the words end the tag; the paper's neutral vector fills the slots before them
    torch.testing.assert_close(vectors[3:], emb[ids])
    torch.testing.assert_close(vectors[:3], initial_tag(emb, 3))
    tm.add_tag("Long", "domain", length=2, init_text="French text")  # longer than the tag: its first tokens
    first = tm.tokenizer("French text", add_special_tokens=False)["input_ids"][:2]
    torch.testing.assert_close(tm.tag_vectors["Long"].detach(), emb[first])
    with pytest.raises(DomainLMError, match="no tokens"):
        tm.add_tag("Empty", "domain", init_text="")
