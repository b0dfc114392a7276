"""Parameter-efficient baselines on the same frozen backbone as the tags, each with the same kind of head.

* `linear_probe`: frozen features, then scikit-learn ridge (RidgeCV / RidgeClassifierCV) on them;
* `prompt_tuning`: peft prompt tuning, as many virtual tokens as the tag method uses for the task
  (20 = 2 tags x 10 by default), plus a trainable head;
* `lora`: peft LoRA (r 8, alpha 16, dropout 0.05, the paper's settings) on the attention projections of
  the model's family (`domainlm.backbone.LORA_TARGETS`), plus a trainable head.

Input text is the task template with its markers dropped (see `plain_text`),
data of the task's character-level domains (SMILES, proteins) spelled one character a token as the tag
method reads them, so every method sees the same tokens.
Features are the same for all three: the mean of the last hidden state over real tokens for encoders,
the last non-pad token for causal LMs. The head is `engine.heads.Head`, the tag method's own, so label
standardisation and losses match. Training is the tags' loop (`domainlm.training.fit`, with the tags'
TrainConfig): AdamW, cosine schedule with warm-up, gradient clipping, length-bucketed batches, the best
validation state restored.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from domainlm import cache, distributed, io
from domainlm import metrics as metric_functions
from domainlm.backbone import (
    ensure_pad_token,
    is_causal_lm,
    load,
    lora_layers,
    lora_targets,
    max_positions,
    process_device,
)
from domainlm.batching import pad_ids
from domainlm.engine.heads import Head, HeadSpec
from domainlm.engine.tag_specs import initial_tag
from domainlm.engine.template import Template
from domainlm.errors import DomainLMError
from domainlm.progress import batches_by_length
from domainlm.tasks.base import Example, TaskData, TaskSpec
from domainlm.training import TrainableMethod, fit, length_bucketed_batches, seed_everything

log = logging.getLogger("domainlm.baselines")

METHODS = ("linear_probe", "prompt_tuning", "lora")
# One documented learning rate per method, used unless the caller sets one. Tags keep the paper's 1e-4;
# prompt tuning and LoRA move far less per step at that rate within the few epochs a CPU run affords, and
# the prompt-tuning and LoRA literature trains them at 1e-3 and above.
DEFAULT_LR = {"prompt_tuning": 1e-3, "lora": 1e-3}
RIDGE_ALPHAS = tuple(10.0**k for k in range(-3, 5))


@dataclass
class PeftSettings:
    """What differs between the baselines; everything shared with tags comes from the TrainConfig."""

    num_virtual_tokens: int = 20  # prompt tuning: the tag method's total tag vectors for the task
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    max_length: int | None = None  # tokens per text; default: the model's position limit (minus prompts)
    # Character-level data spans (proteins, SMILES) cut to this many characters, i.e. tokens, as the tag
    # method's `--overflow truncate --max-span-tokens N` does: both read the same residues.
    max_span_chars: int | None = None
    target_modules: list[str] | None = None  # LoRA: default the family's (domainlm.backbone.LORA_TARGETS)
    cache_dir: str | None = None  # linear-probe features; default domainlm.cache.cache_dir()

    def __post_init__(self):
        if self.num_virtual_tokens < 1 or self.lora_r < 1:
            raise DomainLMError("num_virtual_tokens and lora_r must be >= 1")
        if not 0 <= self.lora_dropout < 1:
            raise DomainLMError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


# ---- backbone ---------------------------------------------------------------------------------------------


@dataclass
class Backbone:
    """A transformer without its LM head, its tokenizer, and whether it reads left to right."""

    model: nn.Module
    tokenizer: object
    causal: bool
    name: str


def load_backbone(model, dtype: str = "float32", device: str | None = None) -> Backbone:
    """`model`: a name as `domainlm.backbone.resolve` takes it, or an in-process (model, tokenizer) pair."""
    if isinstance(model, tuple):
        net, tokenizer = model
        causal = is_causal_lm(net)
        name = getattr(net.config, "_name_or_path", "") or f"{net.config.model_type} (in-process)"
        body = net.base_model if causal else net
        ensure_pad_token(tokenizer)
    else:
        loaded = load(str(model), "features", dtype=dtype)
        body, tokenizer, causal, name = loaded.model, loaded.tokenizer, loaded.causal, str(model)
    for p in body.parameters():
        p.requires_grad_(False)
    body.eval()
    device = process_device(device)  # several processes: each its own
    if device:
        body.to(device)
    return Backbone(body, tokenizer, causal, name)


def pool(hidden: torch.Tensor, mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """Last real token (causal LMs: the only one that has read the whole input) or mean over real tokens."""
    if causal:
        last = mask.shape[1] - 1 - mask.flip(1).float().argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)


class HeadedBackbone(nn.Module):
    """A (possibly peft-wrapped) backbone, pooled, then a head. Only peft's and the head's weights train."""

    def __init__(self, body: nn.Module, head: Head, causal: bool, n_prompt: int = 0):
        super().__init__()
        self.body, self.head, self.causal, self.n_prompt = body, head, causal, n_prompt

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # peft prepends the virtual tokens; read out at the input's own positions, as the linear probe does
        # (the prompt acts through attention, and an average over 20 near-constant prompt states would
        # drown the input's signal)
        return self.head(pool(hidden[:, self.n_prompt :], attention_mask, self.causal))

    def train(self, mode: bool = True):
        super().train(mode)
        # The frozen model stays in eval mode, as under tags (attention layers read their own `training`
        # flag for attention dropout); only LoRA's own dropout follows `mode`.
        self.body.eval()
        for name, module in self.body.named_modules():
            if name.endswith("lora_dropout"):
                module.train(mode)
        return self

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters().values())


def build_model(
    method: str, backbone: Backbone, head_spec: HeadSpec, settings: PeftSettings
) -> HeadedBackbone:
    """The backbone wrapped for `method` (prompt_tuning or lora) with a fresh head; base weights frozen."""
    from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model
    from transformers.pytorch_utils import Conv1D

    body = backbone.model
    hidden = body.get_input_embeddings().weight.shape[1]
    if method == "prompt_tuning":
        config = PromptTuningConfig(
            task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=settings.num_virtual_tokens
        )
        wrapped = get_peft_model(body, config)
        # Start from the tags' initialisation (mean embedding at the average norm) so both begin alike.
        with torch.no_grad():
            start = initial_tag(body.get_input_embeddings().weight, settings.num_virtual_tokens)
            wrapped.prompt_encoder["default"].embedding.weight.copy_(start)
        n_prompt = settings.num_virtual_tokens
    elif method == "lora":
        targets = lora_layers(body, lora_targets(body.config, settings.target_modules))
        config = LoraConfig(
            task_type=TaskType.FEATURE_EXTRACTION,
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=targets,
            fan_in_fan_out=any(isinstance(body.get_submodule(n), Conv1D) for n in targets),  # GPT-2 layers
        )
        wrapped, n_prompt = get_peft_model(body, config), 0
    else:
        raise DomainLMError(f"build_model makes prompt_tuning or lora models, not {method!r}")
    head = Head(hidden, head_spec).to(body.get_input_embeddings().weight.device)
    return HeadedBackbone(wrapped, head, backbone.causal, n_prompt)


# ---- data ------------------------------------------------------------------------------------------


@dataclass
class EncodedTexts:
    ids: list[list[int]]
    labels: np.ndarray
    example_ids: list[str]
    n_truncated: int = 0


def plain_text(
    template: Template, fields: dict, char_level: tuple[str, ...] = (), item=None, max_span_chars=None
) -> str:
    """The template without its markers. Data after a domain in `char_level` is spelled with spaces, one
    character a token, as the tag method tokenises it (and as the paper's code feeds proteins): otherwise
    a WordPiece tokenizer turns a 300-residue protein, one 'word' over 100 characters, into a single [UNK].
    `max_span_chars`: such data keeps only its first characters."""
    out = []
    for part in template.render(fields, item=item):
        if part.kind == "text":
            out.append(part.value)
        elif part.kind == "data" and part.domain in char_level:
            out.append(" ".join(part.value[:max_span_chars] if max_span_chars else part.value))
        elif part.kind == "data":
            out.append(part.value)
    return re.sub(r"\s+", " ", "".join(out)).strip()


def encode_examples(
    template: Template, examples: list[Example], tokenizer, budget: int, char_level=(), max_span_chars=None
):
    """Token ids of each example's marker-free text, and how many had to be cut to `budget` tokens.

    An over-long text loses the end of its longest field (the data span), never the template around it:
    a causal LM reads out at the template's last token, which must survive."""
    ids, cut = [], 0
    for e in examples:
        tokens = tokenizer(plain_text(template, e.fields, char_level, e.id, max_span_chars))["input_ids"]
        if len(tokens) > budget:
            tokens, cut = _shorten_longest_field(template, e, tokenizer, budget, char_level), cut + 1
        ids.append(tokens)
    return ids, cut


def _shorten_longest_field(
    template: Template, example: Example, tokenizer, budget: int, char_level
) -> list[int]:
    field = max(template.fields, key=lambda f: len(str(example.fields[f])))
    value = str(example.fields[field])

    def tokens(n_chars: int) -> list[int]:
        text = plain_text(template, {**example.fields, field: value[: max(1, n_chars)]}, char_level)
        return tokenizer(text)["input_ids"]

    lo, hi = 1, len(value)  # the longest prefix that fits, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(tokens(mid)) <= budget else (lo, mid - 1)
    fitted = tokens(lo)
    return fitted[:budget]  # only shorter when the template alone exceeds the budget


def text_budget(backbone: Backbone, settings: PeftSettings) -> int:
    """Tokens a text may use: the position limit less the prompt (same for all methods, for a fair test)."""
    limit = max_positions(backbone.model.config) or 4096
    if settings.max_length:
        limit = min(limit, settings.max_length)
    return limit - settings.num_virtual_tokens


def encode_splits(
    task: TaskSpec, data: TaskData, backbone: Backbone, settings: PeftSettings
) -> dict[str, EncodedTexts]:
    budget = text_budget(backbone, settings)
    out, template = {}, Template(task.template)
    for split, examples in data.splits().items():
        ids, cut = encode_examples(
            template, examples, backbone.tokenizer, budget, task.char_level_tags, settings.max_span_chars
        )
        if cut:
            log.warning("%s: %d of %d %s texts cut to %d tokens", task.name, cut, len(ids), split, budget)
        labels = np.array([e.label for e in examples], dtype=np.float64)
        out[split] = EncodedTexts(ids, labels, [e.id for e in examples], cut)
    return out


def head_spec_for(task: TaskSpec, data: TaskData) -> HeadSpec:
    """Regression labels standardised by the training mean and std, as the tag method does."""
    if task.head == "classification":
        return HeadSpec("classification", n_classes=task.n_classes, classes=data.info.get("classes"))
    y = np.array([e.label for e in data.train], dtype=np.float64)
    std = float(y.std()) if len(y) > 1 and y.std() > 0 else 1.0
    return HeadSpec("regression", label_mean=float(y.mean()), label_std=std)


# ---- training --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(
    net: HeadedBackbone, ids: list[list[int]], pad_id: int, batch_size: int, desc="predicting"
) -> np.ndarray:
    """Regression values in label units, or class indices, in input order; under several processes each
    predicts its shard and all get every row."""
    return distributed.gather_rows(
        lambda idx: _predict([ids[i] for i in idx], net, pad_id, batch_size, desc), len(ids)
    )


@torch.no_grad()
def _predict(
    ids: list[list[int]], net: HeadedBackbone, pad_id: int, batch_size: int, desc: str
) -> np.ndarray:
    was_training = net.training
    net.eval()
    device = net.head.linear.weight.device
    out = np.zeros(len(ids))
    for idx in batches_by_length([len(x) for x in ids], batch_size, desc):
        pred = net.head.predictions(net(**pad_ids([ids[i] for i in idx], pad_id, device=device)))
        out[idx] = (pred.argmax(-1) if pred.ndim == 2 else pred).float().cpu().numpy()
    net.train(was_training)
    return out


class HeadTraining(TrainableMethod):
    """A HeadedBackbone's peft weights and head on encoded training texts, with the head's own loss."""

    def __init__(self, net: HeadedBackbone, train: EncodedTexts, pad_id: int):
        self.net, self.module, self.train, self.pad_id = net, net, train, pad_id
        self.n_examples = len(train.ids)
        self.labels = torch.tensor(train.labels, dtype=torch.float32)
        # positions the backbone sees per example: the text and any virtual prompt tokens
        self.lengths = [len(x) + net.n_prompt for x in train.ids]

    def tokens(self, batch: list[int]) -> int:
        return sum(self.lengths[i] for i in batch)

    def batches(self, batch_size: int, seed: int) -> list[list[int]]:
        return length_bucketed_batches(self.lengths, batch_size, seed)

    def memory_plan(self):
        return self.net.body.config, self.lengths

    def loss(self, batch: list[int]) -> torch.Tensor:
        device = self.net.head.linear.weight.device
        raw = self.net(**pad_ids([self.train.ids[i] for i in batch], self.pad_id, device=device))
        return self.net.head.loss(raw, self.labels[batch].to(device))


def _result(task, encoded, predictions, trainable: int, started: float, **extra) -> dict:
    metrics = {}
    for split, pred in predictions.items():
        if len(pred):
            scores = metric_functions.compute(task.metrics, encoded[split].labels, pred)
            metrics.update({f"{split}_{k}": v for k, v in scores.items()})
    test = encoded["test"]
    return {
        "metrics": metrics,
        "trainable_params": int(trainable),
        "seconds": round(time.perf_counter() - started, 2),
        "predictions": {
            "ids": test.example_ids,
            "y_true": test.labels.tolist(),
            "y_pred": predictions["test"].tolist(),
        },
        "n_truncated": sum(e.n_truncated for e in encoded.values()),
        **extra,
    }


def train_peft_baseline(
    method: str,
    task: TaskSpec,
    data: TaskData,
    model,
    config,
    settings: PeftSettings | None = None,
    log_fn: Callable[[str], None] = log.info,
    checkpoint=None,
    resume: bool = False,
) -> dict:
    """Train and test one of METHODS; returns {"metrics": {"val_mse", "test_mse", ...}, "trainable_params",
    "seconds", "predictions": {"ids", "y_true", "y_pred"} (test split), "history", ...}.

    `model` as for `load_backbone`; `config` a `domainlm.training.TrainConfig`, whose lr is used as given
    (`method_lr` gives the documented per-method default). `checkpoint`: a file the training state is saved
    to (every `config.checkpoint_every` steps, each epoch's end and on Ctrl-C / SIGTERM) and, with
    `resume`, continued from."""
    if method not in METHODS:
        raise DomainLMError(f"unknown peft baseline {method!r}; choose from {', '.join(METHODS)}")
    settings = settings or PeftSettings()
    started = time.perf_counter()
    backbone = load_backbone(model, config.dtype, config.device)
    encoded = encode_splits(task, data, backbone, settings)
    head_spec = head_spec_for(task, data)
    if method == "linear_probe":
        return _linear_probe(task, backbone, encoded, head_spec, config, settings, started)

    seed_everything(config.seed)
    net = build_model(method, backbone, head_spec, settings)
    total = sum(p.numel() for p in net.parameters())
    log_fn(f"{method}: training {net.num_trainable():,} of {total:,} parameters at lr {config.lr:g}")
    pad_id = backbone.tokenizer.pad_token_id
    val = encoded["val"]

    def validate() -> dict:
        pred = predict(net, val.ids, pad_id, config.eval_batch_size, "validating")
        return metric_functions.compute(task.metrics, val.labels, pred)

    trained = fit(
        HeadTraining(net, encoded["train"], pad_id),
        config.loop(),
        validate=validate if val.ids else None,
        select=task.primary_metric,
        checkpoint=checkpoint,
        resume=resume,
        log=log_fn,
        description=f"{method} on {task.name}",
    )
    predictions = {
        split: predict(net, encoded[split].ids, pad_id, config.eval_batch_size) for split in ("val", "test")
    }
    info = {
        "history": trained.history,
        "best_step": trained.best_step if trained.best_step is not None else trained.steps,
        "steps": trained.steps,
        "train_seconds": trained.seconds,
        "tokens_per_s": trained.tokens_per_s,
    }
    return _result(task, encoded, predictions, net.num_trainable(), started, lr=config.lr, **info)


# ---- linear probe ----------------------------------------------------------------------------------------


@torch.no_grad()
def frozen_features(
    backbone: Backbone, ids: list[list[int]], batch_size: int, settings: PeftSettings
) -> np.ndarray:
    """Pooled last hidden states of the bare backbone, cached per (model weights, texts)."""
    key = cache.texts_sha256(
        [_model_key(backbone), str(backbone.causal)] + [",".join(map(str, x)) for x in ids]
    )
    path = cache.cache_dir(settings.cache_dir) / "features" / f"{key[:32]}.npy"
    if path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # unreadable entry: recompute below
    device = backbone.model.get_input_embeddings().weight.device
    out = np.zeros((len(ids), backbone.model.get_input_embeddings().weight.shape[1]), dtype=np.float32)
    for idx in batches_by_length([len(x) for x in ids], batch_size, "features"):
        batch = pad_ids([ids[i] for i in idx], backbone.tokenizer.pad_token_id, device=device)
        hidden = backbone.model(**batch).last_hidden_state
        out[idx] = pool(hidden, batch["attention_mask"], backbone.causal).float().cpu().numpy()
    if distributed.is_main_process():  # one writer for the shared cache
        with io.atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, out)
    return out


def _model_key(backbone: Backbone) -> str:
    """Identifies the weights: name, config and a hash of the input embeddings (cheap, and unique enough)."""
    emb = backbone.model.get_input_embeddings().weight.detach().float().cpu().numpy()
    digest = cache.texts_sha256([backbone.name, backbone.model.config.to_json_string()])
    return digest + hashlib.sha256(emb.tobytes()).hexdigest()


def _linear_probe(task, backbone, encoded, head_spec, config, settings, started) -> dict:
    from sklearn.linear_model import RidgeClassifierCV, RidgeCV

    feats = {
        s: frozen_features(backbone, e.ids, config.eval_batch_size, settings) for s, e in encoded.items()
    }
    classify, labels = head_spec.type == "classification", encoded["train"].labels
    ridge = (RidgeClassifierCV if classify else RidgeCV)(alphas=RIDGE_ALPHAS)
    ridge.fit(feats["train"], labels.astype(int) if classify else labels)
    predictions = {s: ridge.predict(feats[s]) if len(feats[s]) else np.zeros(0) for s in ("val", "test")}
    trainable = ridge.coef_.size + np.size(ridge.intercept_)
    return _result(task, encoded, predictions, trainable, started, alpha=float(ridge.alpha_))


def method_lr(method: str, lr: float | None, tag_lr: float) -> float:
    """The lr a method trains at: the caller's, else the method's documented default, else the tags'."""
    return lr if lr is not None else DEFAULT_LR.get(method, tag_lr)
