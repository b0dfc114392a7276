"""The target-only loss equals the transformers loss over full logits, for plain models and every peft
method the generative students and baselines use, with right padding and prompts of different lengths."""

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

from domainlm.batching import pad_batch
from domainlm.target_loss import target_loss
from tiny_models import tiny_model

PEFT = {
    "none": None,
    "lora": lambda: LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, target_modules="all-linear"),
    "prefix": lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3),
    "prompt": lambda: PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5),
}


def batch():
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    targets = [[20, 21, 3], [22, 3], [23, 24, 25, 26, 3]]
    features = [{"input_ids": p + t, "labels": [-100] * len(p) + t} for p, t in zip(prompts, targets)]
    return pad_batch(features, 0, side="right")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method", list(PEFT))
def test_target_loss_matches_the_full_logits_loss_and_its_gradients(family, method):
    model, _ = tiny_model(family)
    if PEFT[method]:
        model = get_peft_model(model, PEFT[method]())
        with torch.no_grad():  # a LoRA starts as a no-op; move it off zero so its gradients mean something
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
    model.train(False)
    b = batch()
    trained = [p for p in model.parameters() if p.requires_grad]
    full = model(**b).loss
    full_grads = torch.autograd.grad(full, trained)
    ours = target_loss(model, b["input_ids"], b["attention_mask"], b["labels"])
    our_grads = torch.autograd.grad(ours, trained)
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-6)
    for a, g in zip(our_grads, full_grads):
        torch.testing.assert_close(a, g, rtol=1e-4, atol=1e-6)


def test_labels_with_no_target_fall_back_to_the_model_s_own_loss():
    model, _ = tiny_model("llama")
    b = batch()
    b["labels"][:] = -100
    assert torch.isnan(target_loss(model, b["input_ids"], b["attention_mask"], b["labels"]))


@pytest.mark.parametrize("method", ["none", "prompt"])
def test_a_model_without_logits_to_keep_gets_the_same_loss_from_full_logits(method, monkeypatch):
    import domainlm.target_loss as tl

    model, _ = tiny_model("llama")
    if PEFT[method]:
        model = get_peft_model(model, PEFT[method]())
    model.train(False)
    b = batch()
    expected = model(**b).loss
    monkeypatch.setattr(tl, "_keeps_logits", lambda m: False)
    torch.testing.assert_close(target_loss(model, b["input_ids"], b["attention_mask"], b["labels"]), expected)
