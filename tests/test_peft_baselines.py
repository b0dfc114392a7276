"""Linear probe, prompt tuning and LoRA baselines on a frozen backbone, for an encoder and a causal LM."""

import random

import numpy as np
import pytest
import torch

from domainlm import backbone as models
from domainlm import metrics
from domainlm.baselines import peft_heads as ph
from domainlm.batching import pad_ids
from domainlm.engine.heads import HeadSpec
from domainlm.engine.template import Template
from domainlm.tasks.base import Example, TaskData, TaskSpec
from domainlm.training import TrainConfig, fit
from tiny_models import tiny_model

FAMILIES = ("bert", "llama")
TASK = TaskSpec("toy", "The SMILES is <SMILES> {smiles}. Output <Y>")


def toy_data(n_train=32, n_eval=8, seed=0) -> TaskData:
    """The label is the fraction of N in a C/N string: learnable from token identities."""
    rng = random.Random(seed)

    def example(i):
        s = "".join(rng.choice("CN") for _ in range(rng.randint(4, 12)))
        return Example(str(i), {"smiles": s}, s.count("N") / len(s))

    n = n_train + 2 * n_eval
    rows = [example(i) for i in range(n)]
    return TaskData(rows[:n_train], rows[n_train : n_train + n_eval], rows[n_train + n_eval :])


def backbone(family):
    return ph.load_backbone(tiny_model(family))


def batch(bb, texts):
    return pad_ids([bb.tokenizer(t)["input_ids"] for t in texts], bb.tokenizer.pad_token_id)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_tuning_trains_exactly_prompt_and_head(family):
    bb = backbone(family)
    net = ph.build_model("prompt_tuning", bb, HeadSpec("regression"), ph.PeftSettings(num_virtual_tokens=20))
    hidden = bb.model.get_input_embeddings().weight.shape[1]
    trainable = net.trainable_parameters()
    assert sorted(trainable) == [
        "body.prompt_encoder.default.embedding.weight",
        "head.linear.bias",
        "head.linear.weight",
    ]
    assert net.num_trainable() == 20 * hidden + hidden + 1


@pytest.mark.parametrize(
    ("family", "layers"),
    [
        (
            "bert",
            {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"},
        ),
        ("llama", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}),
        ("gpt2", {"attn.c_attn", "attn.c_proj"}),
    ],
)
def test_lora_sits_on_every_attention_projection_and_nowhere_else(family, layers):
    bb = backbone(family)
    targets = models.lora_layers(bb.model, models.lora_targets(bb.model.config))
    assert {
        ".".join(t.split(".")[-3:]) if family == "bert" else ".".join(t.split(".")[-2:]) for t in targets
    } == layers
    assert len(targets) == len(layers) * bb.model.config.num_hidden_layers
    # r x (in + out) per adapted layer; Linear and GPT-2's Conv1D only differ in weight orientation
    expected = sum(8 * sum(bb.model.get_submodule(t).weight.shape) for t in targets)
    net = ph.build_model("lora", bb, HeadSpec("regression"), ph.PeftSettings())
    trainable = net.trainable_parameters()
    adapters = [n for n in trainable if not n.startswith("head.")]
    assert len(adapters) == 2 * len(targets) and all(".lora_A." in n or ".lora_B." in n for n in adapters)
    hidden = bb.model.get_input_embeddings().weight.shape[1]
    assert net.num_trainable() == expected + hidden + 1


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_lora_reads_the_same_features_as_the_bare_model(family):
    bb = backbone(family)
    texts = ["the smiles is c c o", "the smiles is n c c c n n c"]
    b = batch(bb, texts)
    with torch.no_grad():
        bare = ph.pool(bb.model(**b).last_hidden_state, b["attention_mask"], bb.causal)
        net = ph.build_model("lora", bb, HeadSpec("regression"), ph.PeftSettings())
        net.eval()
        wrapped = ph.pool(net.body(**b).last_hidden_state, b["attention_mask"], bb.causal)
    torch.testing.assert_close(wrapped, bare)


def test_pooling_reads_the_last_real_token_or_the_mean_of_real_tokens():
    hidden = torch.arange(2 * 3 * 1, dtype=torch.float32).reshape(2, 3, 1)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert ph.pool(hidden, mask, causal=True).ravel().tolist() == [1.0, 5.0]
    assert ph.pool(hidden, mask, causal=False).ravel().tolist() == [0.5, 4.0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["prompt_tuning", "lora"])
def test_base_frozen_and_loss_falls(family, method):
    bb = backbone(family)
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    data = toy_data()
    encoded = ph.encode_splits(TASK, data, bb, ph.PeftSettings())
    net = ph.build_model(method, bb, ph.head_spec_for(TASK, data), ph.PeftSettings())
    config = TrainConfig(epochs=30, batch_size=8, grad_accum=1, lr=1e-2)
    train, pad_id = encoded["train"], bb.tokenizer.pad_token_id
    trained = fit(ph.HeadTraining(net, train, pad_id), config.loop(), log=lambda _: None)
    losses = [h["train_loss"] for h in trained.history]
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    fitted = ph.predict(net, train.ids, pad_id, batch_size=32)
    assert metrics.mse(train.labels, fitted) < 0.5 * np.var(train.labels)  # beats the mean predictor
    # LoRA wraps layers in place (weights move under .base_layer); prompt tuning leaves them as they were
    after = {k.replace(".base_layer", ""): v for k, v in bb.model.state_dict().items() if "lora_" not in k}
    assert sorted(after) == sorted(before)
    for name, value in before.items():
        assert torch.equal(after[name], value), name


@pytest.mark.parametrize("family", FAMILIES)
def test_end_to_end_results_and_feature_cache(tmp_path, family):
    model, tokenizer = tiny_model(family)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = toy_data(n_train=16, n_eval=4)
    config = TrainConfig(epochs=1, batch_size=8, grad_accum=1)
    settings = ph.PeftSettings(cache_dir=str(tmp_path / "cache"))
    hidden = model.get_input_embeddings().weight.shape[1]
    results = {}
    for method in ph.METHODS:
        results[method] = ph.train_peft_baseline(
            method, TASK, data, str(tmp_path / "model"), config, settings
        )
        result = results[method]
        assert set(result["metrics"]) == {f"{s}_{m}" for s in ("val", "test") for m in TASK.metrics}
        assert result["predictions"]["ids"] == [e.id for e in data.test]
        assert result["predictions"]["y_true"] == [e.label for e in data.test]
        assert len(result["predictions"]["y_pred"]) == 4
        y_true, y_pred = result["predictions"]["y_true"], result["predictions"]["y_pred"]
        assert result["metrics"]["test_mse"] == pytest.approx(metrics.mse(y_true, y_pred))
    assert results["linear_probe"]["trainable_params"] == hidden + 1
    assert results["prompt_tuning"]["trainable_params"] == 20 * hidden + hidden + 1
    assert list((tmp_path / "cache" / "features").glob("*.npy"))
    again = ph.train_peft_baseline("linear_probe", TASK, data, str(tmp_path / "model"), config, settings)
    assert again["metrics"] == results["linear_probe"]["metrics"]


def test_classification_heads_beat_the_majority_class(tmp_path):
    data = toy_data(n_train=32, n_eval=16)
    for e in data.train + data.val + data.test:
        e.label = int(e.label > 0.5)  # mostly N
    task = TaskSpec(
        "toycls",
        TASK.template,
        head="classification",
        n_classes=2,
        metrics=("accuracy",),
        primary_metric="accuracy",
    )
    config = TrainConfig(epochs=12, batch_size=8, grad_accum=1, lr=1e-2)
    settings = ph.PeftSettings(cache_dir=str(tmp_path))
    probe = ph.train_peft_baseline("linear_probe", task, data, tiny_model("bert"), config, settings)
    lora = ph.train_peft_baseline("lora", task, data, tiny_model("bert"), config, settings)
    train_labels = [e.label for e in data.train]
    majority = max(set(train_labels), key=train_labels.count)
    y_true = [e.label for e in data.test]
    for result in (probe, lora):
        y_pred = result["predictions"]["y_pred"]
        assert set(y_pred) <= {0.0, 1.0}
        assert result["metrics"]["test_accuracy"] == metrics.accuracy(y_true, y_pred)
        assert result["metrics"]["test_accuracy"] > metrics.accuracy(y_true, [majority] * len(y_true))
    bb = backbone("bert")
    adapters = sum(
        8 * sum(bb.model.get_submodule(t).weight.shape)
        for t in models.lora_layers(bb.model, models.lora_targets(bb.model.config))
    )
    assert lora["trainable_params"] == adapters + 2 * 33  # rank-8 adapters plus the two-way head


def test_long_texts_lose_the_end_of_their_data_not_the_template(tmp_path):
    data = toy_data(n_train=8, n_eval=2)
    data.train[0].fields["smiles"] = "C" * 150 + "N" * 150
    bb = backbone("llama")
    ids, cut = ph.encode_examples(Template(TASK.template), data.train, bb.tokenizer, budget=64)
    assert cut == 1 and len(ids[0]) == 64
    assert bb.tokenizer.convert_ids_to_tokens(ids[0][-2:]) == [".", "output"]  # readout token kept
    assert "n" not in bb.tokenizer.convert_ids_to_tokens(ids[0])  # the data span's end went
    config = TrainConfig(epochs=1, batch_size=8, grad_accum=1)
    settings = ph.PeftSettings(max_length=84, cache_dir=str(tmp_path))  # 84 - 20 prompt positions = 64
    result = ph.train_peft_baseline("linear_probe", TASK, data, tiny_model("llama"), config, settings)
    assert result["n_truncated"] == 1


def test_unknown_method_is_refused():
    with pytest.raises(Exception, match="unknown peft baseline"):
        ph.train_peft_baseline("adapters", TASK, toy_data(), tiny_model("bert"), TrainConfig())


def test_character_level_domains_are_spelled_out_for_the_baselines():
    template = Template("The protein is <Protein> {seq}. Name {name}. Value <Y>")
    text = ph.plain_text(template, {"seq": "MKV", "name": "KIN1"}, char_level=("Protein",))
    assert text == "The protein is M K V. Name KIN1. Value"
    assert ph.plain_text(template, {"seq": "MKV", "name": "KIN1"}) == "The protein is MKV. Name KIN1. Value"
    cut = ph.plain_text(template, {"seq": "MKVLA", "name": "KIN1"}, char_level=("Protein",), max_span_chars=2)
    assert cut == "The protein is M K. Name KIN1. Value"  # as the tags' --overflow truncate cuts the span


@pytest.mark.parametrize("method", ["prompt_tuning", "lora"])
def test_training_mode_keeps_the_frozen_model_in_eval_mode(method):
    # BERT's attention reads its own `training` flag for attention dropout: the whole body must stay in
    # eval mode, as the tag method keeps it; only LoRA's dropout follows train().
    net = ph.build_model(method, backbone("bert"), HeadSpec("regression"), ph.PeftSettings())
    net.train()
    training = [n for n, m in net.named_modules() if m.training and n not in {"", "head", "head.linear"}]
    assert training and all(".lora_dropout" in n for n in training) if method == "lora" else not training
    net.eval()
    assert not any(m.training for m in net.modules())
