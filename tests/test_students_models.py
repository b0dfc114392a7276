"""Students on tiny in-process models: which weights train, overfitting, frozen base, save/reload, resume."""

import pytest
import torch

from domainlm.errors import InputError
from domainlm.qa import QAItem
from domainlm.qa.students import StudentConfig
from domainlm.qa.students.student import get_method
from domainlm.qa.students.trainable import train_student
from domainlm.training import CHECKPOINT
from student_helpers import ITEMS, save_tiny, student_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {family: save_tiny(root / family, family) for family in ("llama", "gpt2", "qwen2", "bert")}


def trainable_names(student):
    return {n for n, p in student.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("family", "modules"),
    [
        ("llama", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]),
        ("qwen2", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]),
        ("gpt2", ["attn.c_attn", "attn.c_proj"]),  # not mlp.c_proj, which shares the name
    ],
)
def test_lora_trains_exactly_the_attention_projections(models, family, modules):
    student = get_method("lora").build(student_config(models[family]))
    layers = "model.layers" if family != "gpt2" else "transformer.h"
    expected = {
        f"base_model.model.{layers}.{i}.{m}.lora_{ab}.default.weight"
        for i in range(2)
        for m in modules
        for ab in "AB"
    }
    assert trainable_names(student) == expected


def test_lora_targets_fall_back_to_peft_then_ask():
    from types import SimpleNamespace

    from domainlm.backbone import lora_targets

    assert lora_targets(SimpleNamespace(model_type="t5"), None) == ["q", "v"]  # peft's default for T5
    assert lora_targets(SimpleNamespace(model_type="llama"), ["q_proj"]) == ["q_proj"]
    with pytest.raises(InputError, match="--target-modules"):
        lora_targets(SimpleNamespace(model_type="no-such-family"), None)


def test_fresh_lora_leaves_the_model_unchanged(models):
    student = get_method("lora").build(student_config(models["llama"]))
    batch = student.collate([student.encode(ITEMS[0], train=False).features])
    with torch.no_grad():
        wrapped = student.model(**batch).logits
        with student.model.disable_adapter():
            plain = student.model(**batch).logits
    assert torch.equal(wrapped, plain)  # LoRA's B starts at zero


def _base_weights(student):
    return {n: p.detach().clone() for n, p in student.model.named_parameters() if not p.requires_grad}


def _logits(student, items):
    student.model.eval()
    batch = student.collate([student.encode(item, train=True).features for item in items])
    with torch.no_grad():
        return student.model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.mark.parametrize(("method", "lr", "drop"), [("lora", 2e-2, 0.3), ("prefix", 0.3, 0.6)])
def test_generative_student_overfits_and_reloads(models, tmp_path, method, lr, drop):
    cfg = student_config(models["llama"], method, lr=lr)
    student = get_method(method).build(cfg)
    frozen = _base_weights(student)
    features = [student.encode(item, train=True).features for item in ITEMS]
    state = train_student(student, features, features, cfg)
    losses = [h["train_loss"] for h in state.history]
    assert losses[-1] < drop * losses[0], losses
    assert state.history[-1]["val_loss"] < drop * losses[0]
    after = _base_weights(student)
    assert after.keys() == frozen.keys() and all(torch.equal(frozen[n], after[n]) for n in frozen)

    student.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = get_method(method).build(cfg)
    untrained = _logits(reloaded, ITEMS)
    reloaded.load_weights(tmp_path / "adapter")
    assert torch.equal(_logits(reloaded, ITEMS), _logits(student, ITEMS))
    assert not torch.allclose(untrained, _logits(student, ITEMS))
    assert reloaded.generate(ITEMS) == student.generate(ITEMS)


def test_seqcls_lora_trains_lora_and_the_new_head(models):
    names = trainable_names(get_method("seqcls-lora").build(student_config(models["bert"], "seqcls-lora")))
    lora = {n for n in names if "lora_" in n}
    assert names - lora == {
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    }
    assert len(lora) == 2 * 2 * 4  # A and B, 2 layers, query/key/value/attention-output


def test_tag_student_trains_only_the_tag_and_its_head(models):
    student = get_method("tag").build(student_config(models["bert"], "tag", tag_length=5))
    assert trainable_names(student) == {
        "tag_vectors.PubMedQA",
        "heads.PubMedQA.linear.weight",
        "heads.PubMedQA.linear.bias",
    }
    assert student.parameter_counts()["trainable"] == 5 * 32 + 3 * 32 + 3


@pytest.mark.parametrize(
    ("method", "family"), [("seqcls-lora", "bert"), ("tag", "bert"), ("seqcls-lora", "llama")]
)
def test_classifier_student_learns_the_labels(models, tmp_path, method, family):
    cfg = student_config(models[family], method, lr=3e-2)
    student = get_method(method).build(cfg)
    frozen = _base_weights(student)
    before = [p.predicted for p in student.predict(ITEMS)]
    features = [student.encode(item, train=True).features for item in ITEMS]
    state = train_student(student, features, features, cfg)
    assert state.history[-1]["train_loss"] < 0.5 * state.history[0]["train_loss"]
    assert [p.predicted for p in student.predict(ITEMS)] == [item.label for item in ITEMS] != before
    assert all(torch.equal(frozen[n], p) for n, p in _base_weights(student).items())

    student.save(tmp_path / "saved")
    reloaded = get_method(method).build(cfg)
    reloaded.load_weights(tmp_path / "saved")
    assert [p.predicted for p in reloaded.predict(ITEMS)] == [item.label for item in ITEMS]


@pytest.mark.parametrize(("method", "family"), [("lora", "llama"), ("tag", "bert")])
def test_resume_continues_exactly(models, tmp_path, monkeypatch, method, family):
    # LoRA dropout on: resuming must restore the random state too, not only weights and optimizer. The tag
    # student checks that reloaded weights land in the parameters the optimizer holds.
    cfg = student_config(
        models[family], method, lora_dropout=0.2, batch_size=1, epochs=2, save_every=1, lr=1e-2
    )

    def train(student, **kw):
        features = [student.encode(item, train=True).features for item in ITEMS]
        return train_student(student, features, features, cfg, checkpoint=tmp_path / CHECKPOINT, **kw)

    straight = get_method(method).build(cfg)
    full = train(straight)
    (tmp_path / CHECKPOINT).unlink()

    first = get_method(method).build(cfg)
    calls, real_loss = [], first.loss

    def dying_loss(batch):  # a kill during step 5: three steps and a dev loss in epoch 1, then step 4
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt("killed")
        return real_loss(batch)

    monkeypatch.setattr(first, "loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train(first)
    resumed, messages = get_method(method).build(cfg), []
    state = train(resumed, resume=True, log=messages.append)

    assert any("after step 4 of 6 (1 epochs done)" in m for m in messages)  # says where it resumed
    assert state.steps == full.steps == 6
    assert [h["train_loss"] for h in state.history] == [h["train_loss"] for h in full.history]
    for (name, a), (_, b) in zip(
        straight.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name


def test_long_answers_are_cut_but_the_answer_sentence_kept(models):
    long = QAItem("x", "is it ?", "the context", "no", long_answer=" ".join(["the drug"] * 50))
    student = get_method("lora").build(student_config(models["llama"], max_answer_tokens=20))
    encoded = student.encode(long, train=True).features
    target = [t for t in encoded["labels"] if t != -100]
    assert len(target) == 20
    text = student.tokenizer.decode(target, skip_special_tokens=True)
    assert text.startswith("the drug") and text.endswith(
        "the answer to the question given the context is no."
    )


def test_encoders_cannot_be_generative_students(models):
    with pytest.raises(InputError, match="encoder"):
        get_method("lora").build(student_config(models["bert"]))


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="not a model directory"):
        get_method("lora").build(student_config(str(tmp_path / "nowhere")))
    with pytest.raises(InputError, match="cannot load model"):
        get_method("seqcls-lora").build(student_config("no-such-org/no-such-model"))


def test_max_length_beyond_the_model_is_refused(models):
    for method in ("lora", "seqcls-lora", "tag"):
        family = "llama" if method == "lora" else "bert"
        with pytest.raises(InputError, match="exceeds the 1024 positions" if family == "bert" else "2048"):
            get_method(method).build(student_config(models[family], method, max_length=4096))


def test_bad_settings_fail_at_construction():
    with pytest.raises(InputError, match="unknown method"):
        StudentConfig(method="full", model="m")
    with pytest.raises(InputError, match="lr="):
        StudentConfig(model="m", lr=0)
    with pytest.raises(InputError, match="max_answer_tokens"):
        StudentConfig(model="m", max_length=64, max_answer_tokens=64)


@pytest.mark.parametrize("method", ["lora", "seqcls-lora"])
def test_keep_context_end_feeds_the_end_of_a_long_context(models, method):
    long = QAItem("9", "does it work?", " ".join(["background words"] * 60) + " results improved", "yes")
    student = get_method(method).build(student_config(models["llama"], method, keep_context="end"))
    ids = student.encode(long, train=False).features["input_ids"]
    text = student.tokenizer.decode(ids).replace(" ", "")  # the tiny tokenizer spells unknown words
    assert "resultsimproved" in text and "doesitwork?" in text and "background" not in text[:30]
    with pytest.raises(InputError, match="keep_context"):
        student_config(models["llama"], method, keep_context="middle")


@pytest.mark.parametrize(("method", "family"), [("seqcls-lora", "llama"), ("tag", "bert")])
def test_balanced_class_weights_weigh_each_answer_by_its_rarity(models, method, family):
    student = get_method(method).build(student_config(models[family], method, class_weight="balanced"))
    labels = ["yes"] * 6 + ["no"] * 3 + ["maybe"]
    assert student.weigh_classes(labels) == pytest.approx({"yes": 10 / 18, "no": 10 / 9, "maybe": 10 / 3})
    batch = student.collate([student.encode(item, train=True).features for item in ITEMS])
    logits = student.logits(batch).float()
    targets = torch.tensor([["yes", "no", "maybe"].index(item.label) for item in ITEMS])
    weights = torch.tensor([10 / 18, 10 / 9, 10 / 3])[targets]
    chosen = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    expected = -(weights * chosen).sum() / weights.sum()  # torch's weighted mean
    assert student.loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(InputError, match="no training item is labelled maybe"):
        student.weigh_classes(["yes", "no"])
    unweighted = get_method(method).build(student_config(models[family], method))
    assert unweighted.weigh_classes(labels) is None and unweighted.class_weights is None


def test_class_weights_are_checked_and_only_for_classifier_students(models):
    with pytest.raises(InputError, match="class_weight must be one of none, balanced"):
        student_config(models["bert"], "seqcls-lora", class_weight="inverse")
    with pytest.raises(InputError, match="for classifier students"):
        student_config(models["llama"], "lora", class_weight="balanced")
