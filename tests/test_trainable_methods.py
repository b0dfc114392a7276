"""One battery for every trainable method under `domainlm.training.fit`: a finite loss, updates that touch
only the trainable weights, save/load, kill-and-resume, best-state restore and the non-finite policy.

A new method gets every check by adding one entry to CASES: a function that builds it afresh (the same
weights on every call) on six tiny training examples."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from domainlm.errors import DomainLMError
from domainlm.training import NONFINITE_LIMIT, LoopSettings, TrainableMethod, fit
from student_helpers import ITEMS, save_tiny, student_config
from tiny_models import tiny_model

N_EXAMPLES = 6


@dataclass
class Case:
    method: TrainableMethod
    module: nn.Module  # everything the method runs, frozen base included
    outputs: Callable[[], torch.Tensor]  # eval-mode outputs on fixed inputs
    save: Callable[[Path], None]
    load: Callable[[Path], None]  # what `save` wrote, into this case's model


def toy_molecules(seed: int = 0) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    strings = ["".join(rng.choice("CNO") for _ in range(rng.randint(3, 8))) for _ in range(N_EXAMPLES)]
    return [(s, s.count("C") / len(s)) for s in strings]


def safetensors_io(params: Callable[[], dict[str, nn.Parameter]]):
    """save/load of the trainable tensors, for methods that keep no files of their own."""
    from safetensors.torch import load_file, save_file

    def save(directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().contiguous() for k, v in params().items()}, directory / "weights.safetensors"
        )

    @torch.no_grad()
    def load(directory: Path) -> None:
        for name, value in load_file(directory / "weights.safetensors").items():
            params()[name].copy_(value)

    return save, load


def tags(family: str, **config) -> Case:
    from domainlm.engine.inference import predict
    from domainlm.engine.model import TaggedModel
    from domainlm.engine.tag_training import Split, TagMethod
    from domainlm.engine.template import Template
    from domainlm.training import TrainConfig

    model, tokenizer = tiny_model(family)
    torch.manual_seed(0)
    tm = TaggedModel(model, tokenizer)
    tm.add_tag("SMILES", "domain", length=4, char_level=True)
    head = {"readout": config.get("readout", "last"), "head_hidden": config.get("head_hidden", 0)}
    tm.add_tag("Y", "function", length=4, head="regression", label_mean=0.4, label_std=0.3, **head)
    template = Template("The SMILES is <SMILES> {smiles}. Value <Y>")
    rows = toy_molecules()
    split = Split([template.render({"smiles": s}) for s, _ in rows], [y for _, y in rows])
    method = TagMethod(tm, TrainConfig(**config), split, function_tag="Y", domain_tags=template.domain_tags)

    def load(directory: Path) -> None:
        tm.load_tags(directory)

    def outputs() -> torch.Tensor:
        return torch.as_tensor(predict(tm, split.inputs, isolate=method.isolate))

    return Case(method, tm, outputs, tm.save_tags, load)


def peft(method_name: str) -> Case:
    from domainlm.baselines import peft_heads as ph
    from domainlm.tasks.base import Example, TaskData, TaskSpec

    task = TaskSpec("toy", "The SMILES is <SMILES> {smiles}. Output <Y>")
    examples = [Example(str(i), {"smiles": s}, y) for i, (s, y) in enumerate(toy_molecules())]
    data = TaskData(examples, examples[:2], examples[:2])
    backbone = ph.load_backbone(tiny_model("llama"))
    settings = ph.PeftSettings(num_virtual_tokens=4)
    train = ph.encode_splits(task, data, backbone, settings)["train"]
    torch.manual_seed(0)
    net = ph.build_model(method_name, backbone, ph.head_spec_for(task, data), settings)
    pad_id = backbone.tokenizer.pad_token_id

    def outputs() -> torch.Tensor:
        return torch.as_tensor(ph.predict(net, train.ids, pad_id, batch_size=8))

    return Case(ph.HeadTraining(net, train, pad_id), net, outputs, *safetensors_io(net.trainable_parameters))


def generative_peft(method_name: str, model: str) -> Case:
    from domainlm.baselines.peft_generation import GenerativePeft

    method = GenerativePeft(model, method_name, num_virtual_tokens=4)
    rows = toy_molecules()
    method.set_pairs([f"Input: {s} Output:" for s, _ in rows], [f"{y:.2f}" for _, y in rows])

    def params() -> dict[str, nn.Parameter]:
        return {n: p for n, p in method.module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def outputs() -> torch.Tensor:
        method.module.eval()
        return method.module(input_ids=torch.tensor([p + t for p, t in method.pairs[:1]])).logits

    return Case(method, method.module, outputs, *safetensors_io(params))


@pytest.fixture(scope="module")
def student_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    return {family: save_tiny(root / family, family) for family in ("llama", "bert")}


def student(method_name: str, model: str) -> Case:
    from domainlm.qa.students.student import get_method
    from domainlm.qa.students.trainable import StudentTraining

    config = student_config(model, method_name, tag_length=4, lora_dropout=0.1, num_virtual_tokens=4)
    built = get_method(method_name).build(config)
    items = [*ITEMS, *ITEMS]
    features = [built.encode(item, train=True).features for item in items]

    @torch.no_grad()
    def outputs() -> torch.Tensor:
        built.model.eval()
        batch = built.collate(features)
        if built.kind == "classifier":
            return built.logits(batch)
        return built.model(**{k: v for k, v in batch.items() if k != "labels"}).logits

    return Case(StudentTraining(built, features), built.model, outputs, built.save, built.load_weights)


CASES = {
    "tags-llama": lambda models: tags("llama"),  # isolated spans, keys/values reused
    "tags-bert": lambda models: tags("bert", train_domain_tags=True),
    "tags-llama-mean-mlp": lambda models: tags("llama", readout="mean", head_hidden=8),
    "peft-prompt_tuning": lambda models: peft("prompt_tuning"),
    "peft-lora": lambda models: peft("lora"),
    "peft-generative-lora": lambda models: generative_peft("lora", models["llama"]),
    "peft-generative-prompt_tuning": lambda models: generative_peft("prompt_tuning", models["llama"]),
    "student-lora": lambda models: student("lora", models["llama"]),
    "student-prefix": lambda models: student("prefix", models["llama"]),
    "student-seqcls-lora": lambda models: student("seqcls-lora", models["bert"]),
    "student-tag": lambda models: student("tag", models["bert"]),
}


@pytest.fixture(params=list(CASES))
def build(request, student_models) -> Callable[[], Case]:
    return lambda: CASES[request.param](student_models)


def settings(**kw) -> LoopSettings:
    """Six examples in batches of two: three batches an epoch."""
    return LoopSettings(**{"epochs": 1, "lr": 1e-2, "batch_size": 2, "seed": 0, **kw})


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def trainable(case: Case) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in case.method.trainable_parameters().items()}


def quiet(_: str) -> None:
    pass


def snapshots(case: Case, metric: Callable[[int], float] = lambda _: 0.0):
    """A `validate` that records the trainable weights at every call; its metric is metric(call index)."""
    seen: list[dict[str, torch.Tensor]] = []

    def validate() -> dict:
        seen.append(trainable(case))
        return {"accuracy": metric(len(seen) - 1)}

    return validate, seen


def test_a_batch_gives_a_finite_loss_with_a_gradient(build):
    case = build()
    case.method.train_mode(True)
    loss = case.method.loss([0, 1])
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    grads = [p.grad for p in case.method.trainable_parameters().values()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert case.method.tokens([0, 1]) > 0


def test_a_step_changes_only_trainable_weights(build):
    case = build()
    before = weights(case.module)
    fit(case.method, settings(batch_size=N_EXAMPLES), log=quiet)
    after = weights(case.module)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= set(case.method.trainable_parameters())


def test_saved_weights_reload_to_the_same_outputs(build, tmp_path):
    case = build()
    fit(case.method, settings(epochs=2), log=quiet)
    case.save(tmp_path / "saved")
    fresh = build()
    untrained = fresh.outputs()
    fresh.load(tmp_path / "saved")
    assert not torch.allclose(untrained, case.outputs())
    torch.testing.assert_close(fresh.outputs(), case.outputs(), rtol=0, atol=0)


def test_kill_and_resume_equals_an_uninterrupted_run(build, tmp_path, monkeypatch):
    # Accumulation, warm-up, dropout (students), a checkpoint every step and dev-loss selection: a resume
    # must restore weights, optimizer, schedule, random state, position and best state alike.
    loop = settings(epochs=3, grad_accum=2, warmup_ratio=0.3, schedule="cosine", evals_per_epoch=2)

    def run(case: Case, checkpoint: Path, resume: bool = False):
        def validate() -> dict:
            case.method.train_mode(False)
            with torch.no_grad():
                return {"loss": float(type(case.method).loss(case.method, [0, 1, 2]))}

        return fit(
            case.method,
            loop,
            validate=validate,
            select="loss",
            checkpoint=checkpoint,
            resume=resume,
            log=quiet,
        )

    straight = build()
    full = run(straight, tmp_path / "straight.pt")

    killed = build()
    calls = {"n": 0}
    real_loss = killed.method.loss

    def dying_loss(batch):
        calls["n"] += 1
        if calls["n"] == 6:  # the second batch of epoch 2's first step: mid-epoch, mid-accumulation
            raise KeyboardInterrupt("killed")
        return real_loss(batch)

    monkeypatch.setattr(killed.method, "loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        run(killed, tmp_path / "cut.pt")

    resumed_case = build()
    resumed = run(resumed_case, tmp_path / "cut.pt", resume=True)
    # Equal up to float rounding: tags with span reuse recompute the stored keys/values after a resume in
    # other batches (other padding). A lost random state or schedule would be off by far more.
    assert resumed.steps == full.steps == 6
    losses = [h["train_loss"] for h in full.history]
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(losses, rel=1e-5)
    assert resumed.best_step == full.best_step
    final, expected = trainable(resumed_case), trainable(straight)
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_best_validation_state_is_restored(build):
    case = build()
    scores = [0.5, 0.9, 0.1]  # accuracy: higher is better, so the second evaluation wins
    validate, seen = snapshots(case, lambda call: scores[call])
    result = fit(case.method, settings(evals_per_epoch=3), validate=validate, select="accuracy", log=quiet)
    assert len(seen) == 3 and (result.best_step, result.best_value) == (2, 0.9)
    final = trainable(case)
    assert all(torch.equal(final[n], seen[1][n]) for n in final)
    assert any(not torch.equal(seen[1][n], seen[2][n]) for n in final)


def nan_on(case: Case, monkeypatch, bad: Callable[[int], bool]) -> dict:
    calls = {"n": 0}
    real_loss = case.method.loss

    def loss(batch):
        calls["n"] += 1
        value = real_loss(batch)
        return value * float("nan") if bad(calls["n"]) else value

    monkeypatch.setattr(case.method, "loss", loss)
    return calls


def test_a_nan_loss_skips_its_batch_and_a_run_of_them_stops_training(build, monkeypatch):
    case = build()
    nan_on(case, monkeypatch, lambda call: call == 2)
    validate, seen = snapshots(case)
    result = fit(case.method, settings(evals_per_epoch=3), validate=validate, log=quiet)
    assert result.skipped_batches == 1
    assert result.history[1]["skipped_batches"] == 1 and result.history[1]["train_loss"] is None
    assert all(torch.equal(seen[0][n], seen[1][n]) for n in seen[0])  # the NaN step applied nothing
    assert all(torch.isfinite(p).all() for p in case.method.trainable_parameters().values())

    case = build()
    calls = nan_on(case, monkeypatch, lambda call: True)
    with pytest.raises(DomainLMError, match="non-finite"):
        fit(case.method, settings(epochs=5), log=quiet)
    assert calls["n"] == NONFINITE_LIMIT


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_the_first_step(build, monkeypatch):
    import psutil

    case = build()
    before = trainable(case)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=1))
    if case.method.memory_plan() is None:  # reused spans: only the short function segment back-propagates
        fit(case.method, settings(), log=quiet)
        return
    with pytest.raises(DomainLMError, match="the largest training batch"):
        fit(case.method, settings(), log=quiet)
    assert all(torch.equal(before[n], v) for n, v in trainable(case).items())
