"""Head options beyond the paper: mean read-out, MLP head, standardised input and the probe-fitted start."""

import numpy as np
import pytest
import torch

from domainlm.engine.head_init import initialize_head
from domainlm.engine.inference import predict, readout_features
from domainlm.engine.model import TaggedModel
from domainlm.engine.reuse import SpanCache, reused_forward
from domainlm.errors import DomainLMError
from domainlm.tagruns import train_tagged_task
from domainlm.tasks.base import Example, TaskData, TaskSpec
from domainlm.training import TrainConfig
from tiny_models import PAIR_TEMPLATE, PAIRS, tiny_model

TEMPLATE = "The SMILES is <SMILES> {smiles}. Value <Y>"


def pair_model(**head) -> TaggedModel:
    tm = TaggedModel(*tiny_model("llama"))
    tm.add_tag("Protein", char_level=True)
    tm.add_tag("SMILES", char_level=True)
    tm.add_tag("BA", "function", head="regression", label_mean=6.0, **head)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in tm.tag_vectors.values():
            p.add_(0.1 * torch.randn_like(p))
        tm.heads["BA"].linear.weight.normal_()
    tm.set_trainable(names=["BA"])
    return tm


def molecules(n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = "".join(rng.choice(list("CNOS"), size=int(rng.integers(3, 10))))
        out.append(Example(str(i), {"smiles": s}, s.count("C") / len(s) + 0.1 * s.count("N")))
    return out


def test_mean_readout_reuses_exactly_and_differs_from_last():
    texts = [PAIR_TEMPLATE.format(p=p, s=s) for p, s in PAIRS]
    labels = [5.0, 7.0, 6.0, 6.5]
    tm = pair_model(readout="mean", head_hidden=6)
    full = tm(**tm.encode(texts, labels, isolate=True))
    full.loss.backward()
    grads = {k: p.grad.clone() for k, p in tm.trainable_parameters().items()}
    tm.zero_grad()
    reused = reused_forward(tm, SpanCache(tm), texts, labels)
    reused.loss.backward()
    torch.testing.assert_close(reused.features, full.features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reused.predictions, full.predictions, rtol=1e-5, atol=1e-5)
    for k, p in tm.trainable_parameters().items():
        torch.testing.assert_close(p.grad, grads[k], rtol=1e-4, atol=1e-5)
    # the mean over p vectors is not the last vector
    batch = tm.encode(texts, isolate=True)
    names = ("input_ids", "attention_mask", "tag_index", "position_ids", "segment_ids", "function_segment")
    hidden = tm.hidden_states(**{k: batch[k] for k in names}, isolate=True)
    last = hidden[torch.arange(len(texts)), batch["readout_index"]]
    assert not torch.allclose(last, full.features)


def test_mean_readout_is_padding_side_independent():
    tm = pair_model(readout="mean")
    texts = [PAIR_TEMPLATE.format(p=p, s=s) for p, s in PAIRS]
    with torch.no_grad():
        right = tm(**tm.encode(texts, padding_side="right")).predictions
        left = tm(**tm.encode(texts, padding_side="left")).predictions
    torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-4)


def test_probe_start_equals_a_ridge_on_the_readouts():
    from sklearn.linear_model import RidgeCV

    from domainlm.engine.head_init import RIDGE_ALPHAS

    tm = TaggedModel(*tiny_model("llama"))
    tm.add_tag("SMILES", char_level=True)
    tm.add_tag("Y", "function", head="regression", label_mean=0.5, label_std=0.2)
    inputs = [TEMPLATE.replace("{smiles}", ex.fields["smiles"]) for ex in molecules(40)]
    labels = np.array([ex.label for ex in molecules(40)])
    feats = readout_features(tm, inputs, isolate=True)
    info = initialize_head(tm, "Y", feats, labels, "probe")
    z = (feats - feats.mean(0)) / np.maximum(feats.std(0), 1e-3 * feats.std(0).mean())
    ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit(z, (labels - 0.5) / 0.2)
    expected = ridge.predict(z) * 0.2 + 0.5
    got = predict(tm, inputs, isolate=True)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    assert info["probe_alpha"] == pytest.approx(ridge.alpha_)
    # and it is a real fit: far better than the mean on the training inputs
    assert np.mean((got - labels) ** 2) < 0.5 * np.var(labels)


def test_probe_start_classification_predicts_the_training_classes():
    tm = TaggedModel(*tiny_model("llama"))
    tm.add_tag("SMILES", char_level=True)
    tm.add_tag("Y", "function", head="classification", n_classes=3)
    exs = molecules(45)
    inputs = [TEMPLATE.replace("{smiles}", ex.fields["smiles"]) for ex in exs]
    labels = np.array([min(2, int(ex.label * 3)) for ex in exs])
    feats = readout_features(tm, inputs, isolate=False)
    info = initialize_head(tm, "Y", feats, labels, "probe")
    accuracy = float((predict(tm, inputs, isolate=False).argmax(-1) == labels).mean())
    assert accuracy == pytest.approx(info["probe_train_accuracy"], abs=1e-4)
    assert accuracy > np.bincount(labels).max() / len(labels)


def test_probe_needs_a_linear_head():
    with pytest.raises(DomainLMError, match="linear head"):
        TrainConfig(head_init="probe", head_hidden=16)
    with pytest.raises(DomainLMError, match="head_init"):
        TrainConfig(head_init="ridge")


def toy_task(n_train: int, n_val: int, n_test: int) -> tuple[TaskSpec, TaskData, TaggedModel]:
    exs = molecules(n_train + n_val + n_test)
    data = TaskData(exs[:n_train], exs[n_train : n_train + n_val], exs[n_train + n_val :])
    return TaskSpec("toy", TEMPLATE), data, TaggedModel(*tiny_model("llama"))


def test_run_with_probe_start_keeps_the_start_when_training_only_hurts(tmp_path):
    spec, data, tm = toy_task(40, 10, 10)
    # a learning rate this large wrecks the tags: selection must fall back to the probe-fitted start (step 0)
    config = TrainConfig(
        epochs=1, lr=5.0, batch_size=8, grad_accum=1, head_init="probe", evals_per_epoch=1, warmup_ratio=0
    )
    result = train_tagged_task(spec, data, tm, tmp_path / "run", config)
    history = __import__("json").loads((tmp_path / "run" / "history.json").read_text())
    rows = history["steps"] if isinstance(history, dict) else history
    assert rows[0]["step"] == 0 and "val_mse" in rows[0]
    assert result["head"]["head_init"] == "probe" and result["best_step"] == 0
    assert result["val_mse"] == pytest.approx(rows[0]["val_mse"], rel=1e-4)


def test_head_lr_zero_keeps_the_fitted_head_while_the_tag_learns(tmp_path, monkeypatch):
    import domainlm.tagruns as tagruns

    spec = TaskSpec("toy", TEMPLATE)
    exs = molecules(40)
    data = TaskData(exs[:32], exs[:0], exs[32:])  # no validation: the last weights are kept, not step 0
    tm = TaggedModel(*tiny_model("llama"))
    config = TrainConfig(
        epochs=1, lr=1e-2, head_lr=0.0, batch_size=8, grad_accum=1, head_init="probe", warmup_ratio=0
    )
    fitted = {}

    def capture(*args, **kwargs):  # the head as the probe fitted it, before any step
        info = original(*args, **kwargs)
        fitted.update({k: v.clone() for k, v in tm.heads["Y"].state_dict().items()})
        fitted["tag"] = tm.tag_vectors["Y"].detach().clone()
        return info

    original = tagruns.initialize_head
    monkeypatch.setattr(tagruns, "initialize_head", capture)
    train_tagged_task(spec, data, tm, tmp_path / "run", config)
    for name, value in tm.heads["Y"].state_dict().items():
        torch.testing.assert_close(value, fitted[name], rtol=0, atol=0)
    assert not torch.equal(tm.tag_vectors["Y"].detach(), fitted["tag"])


def test_head_lr_gives_the_heads_their_own_optimizer_group():
    from domainlm.engine.tag_training import Split, TagMethod

    tm = TaggedModel(*tiny_model("llama"))
    tm.add_tag("SMILES", char_level=True)
    tm.add_tag("Y", "function", head="regression")
    inputs = [TEMPLATE.replace("{smiles}", ex.fields["smiles"]) for ex in molecules(4)]
    method = TagMethod(
        tm, TrainConfig(head_lr=1e-5), Split(inputs, [0.0] * 4), function_tag="Y", domain_tags=["SMILES"]
    )
    groups = method.parameter_groups(method.trainable_parameters())
    assert [g.get("lr") for g in groups] == [None, 1e-5]
    assert sum(len(g["params"]) for g in groups) == len(method.trainable_parameters())
    with pytest.raises(DomainLMError, match="head_lr"):
        TrainConfig(head_lr=-1.0)


def test_library_keeps_the_standardisation_and_reads_old_heads(tmp_path):
    tm = TaggedModel(*tiny_model("llama"))
    tm.add_tag("SMILES", char_level=True)
    tm.add_tag("Y", "function", head="regression", readout="mean", head_hidden=4)
    inputs = [TEMPLATE.replace("{smiles}", ex.fields["smiles"]) for ex in molecules(12)]
    initialize_head(tm, "Y", readout_features(tm, inputs, isolate=True), np.zeros(12), "standardized")
    with torch.no_grad():
        tm.heads["Y"].linear.weight.normal_()
    before = predict(tm, inputs, isolate=True)
    tm.save_tags(tmp_path / "lib")
    other = TaggedModel(*tiny_model("llama"))
    other.load_tags(tmp_path / "lib")
    assert other.specs["Y"].head.readout == "mean" and other.specs["Y"].head.hidden == 4
    np.testing.assert_allclose(predict(other, inputs, isolate=True), before, rtol=1e-5, atol=1e-6)
    # a head saved before heads standardised (no center / scale) loads as identity
    state = {k: v for k, v in tm.heads["Y"].state_dict().items() if k not in {"center", "scale"}}
    other.heads["Y"].load_state_dict(state)
    assert torch.equal(other.heads["Y"].scale, torch.ones_like(other.heads["Y"].scale))


def test_train_cli_takes_the_head_options(model_dir, tmp_path):
    import json

    from cli_helpers import train_user_task

    rows = ["smiles,y"] + [f"{ex.fields['smiles']},{ex.label}" for ex in molecules(30)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    extra = ["--head-init", "probe", "--readout", "mean", "--char-level", "SMILES"]
    res = train_user_task(model_dir("llama"), tmp_path / "t.csv", tmp_path / "run", *extra, epochs=1)
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["head"]["head_init"] == "probe" and metrics["head"]["readout"] == "mean"
    assert "probe_alpha" in metrics["head"]


def test_a_batch_too_large_for_memory_is_refused_before_the_probe_read_out(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import psutil

    import domainlm.tagruns as tagruns

    spec = TaskSpec("toy", TEMPLATE)
    exs = molecules(20)
    tm = TaggedModel(*tiny_model("llama"))
    config = TrainConfig(epochs=1, batch_size=8, head_init="probe", reuse=False)
    read = []
    monkeypatch.setattr(tagruns, "start_head", lambda *a, **k: read.append(1))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=1))
    with pytest.raises(DomainLMError, match="the largest training batch"):
        train_tagged_task(spec, TaskData(exs[:12], exs[12:16], exs[16:]), tm, tmp_path / "run", config)
    assert read == []  # refused before the (inference-only, possibly long) read-out pass


def test_a_probe_start_checks_memory_once(tmp_path, monkeypatch):
    import domainlm.training as training

    calls = []
    monkeypatch.setattr(training, "check_batches", lambda *a, **k: calls.append(1))
    spec = TaskSpec("toy", TEMPLATE)
    exs = molecules(20)
    tm = TaggedModel(*tiny_model("llama"))
    config = TrainConfig(epochs=1, batch_size=8, head_init="probe", reuse=False)
    train_tagged_task(spec, TaskData(exs[:12], exs[12:16], exs[16:]), tm, tmp_path / "run", config)
    assert calls == [1]  # before the read-out pass, not again in fit (a warning would be logged twice)


def anchored_method(anchors: int = 6):
    from domainlm.engine.tag_training import Split, TagMethod

    tm = TaggedModel(*tiny_model("llama"))
    tm.add_tag("SMILES", char_level=True)
    tm.add_tag("Y", "function", head="regression")
    exs = molecules(16)
    inputs = [TEMPLATE.replace("{smiles}", ex.fields["smiles"]) for ex in exs]
    split = Split(inputs, [ex.label for ex in exs])
    config = TrainConfig(head_anchors=anchors, head_init="probe")
    method = TagMethod(tm, config, split, function_tag="Y", domain_tags=["SMILES"])
    initialize_head(tm, "Y", readout_features(tm, inputs, isolate=True), split.labels, "probe")
    method.anchor_center()
    return tm, method


def test_anchored_centre_starts_as_the_stored_one_and_ignores_a_shift_of_every_read_out():
    tm, method = anchored_method()
    batch = list(range(8))
    plain = loss_without_anchors(method, batch)
    torch.testing.assert_close(method.loss(batch), plain)  # before any step: the same loss
    # a tag step that moves every read-out alike moves the anchors' mean alike: no prediction moves
    head = tm.heads["Y"]
    features = method.head_features([method.split.inputs[i] for i in batch])
    shift = torch.randn(features.shape[-1])
    with torch.no_grad():
        centre = method.moving_center()
        moved = head(features + shift, center=centre + shift)  # anchors move by the same shift
        torch.testing.assert_close(moved, head(features, center=centre))
        assert not torch.allclose(head(features + shift), head(features))  # a fixed centre does not follow


def loss_without_anchors(method, batch):
    anchors, method.anchors = method.anchors, []
    try:
        return method.loss(batch)
    finally:
        method.anchors = anchors


def test_a_run_with_anchors_saves_the_centre_its_predictions_used(tmp_path):
    spec, data, tm = toy_task(24, 8, 8)
    config = TrainConfig(
        epochs=2, lr=3e-2, head_lr=0.0, batch_size=8, grad_accum=1, head_init="probe", head_anchors=8
    )
    result = train_tagged_task(spec, data, tm, tmp_path / "run", config)
    history = __import__("json").loads((tmp_path / "run" / "history.json").read_text())
    kept = next(row for row in history if row["step"] == result["best_step"] and "val_mse" in row)
    assert result["val_mse"] == pytest.approx(kept["val_mse"], rel=1e-5)  # the kept tags' centre
    other = TaggedModel(*tiny_model("llama"))
    other.load_tags(tmp_path / "run" / "tags")
    inputs = [TEMPLATE.replace("{smiles}", ex.fields["smiles"]) for ex in data.test]
    np.testing.assert_allclose(
        predict(other, inputs, isolate=True).reshape(-1), result["predictions"]["test"].reshape(-1), rtol=1e-4
    )
    with pytest.raises(DomainLMError, match="head_anchors"):
        TrainConfig(head_anchors=-1)
    with pytest.raises(DomainLMError, match="drop --enrich or the anchors"):
        TrainConfig(head_anchors=8, enrich=True)


def test_anchors_are_refused_for_a_tag_that_writes_text():
    from domainlm.engine.tag_training import Split, TagMethod

    tm = TaggedModel(*tiny_model("llama"))
    tm.add_tag("Translate", "function")
    method = TagMethod(tm, TrainConfig(head_anchors=4), Split(["a <Translate> b"]), function_tag="Translate",
                       domain_tags=[])  # fmt: skip
    with pytest.raises(DomainLMError, match="<Translate> writes text and has none"):
        method.anchor_center()
