"""What the tag method trains and what its loss is, for `domainlm.training.fit`. The stage decides:

* domain   (stage 1): domain tags, next-token loss on "<Domain> text" (causal LMs only);
* function (stages 2 and 3): function tags and heads, task loss; domain tags frozen unless
  `train_domain_tags` (joint, for encoders) or `enrich` (also the LM loss, the paper's ablation). A
  generative function tag (no head, e.g. <Translate>) has the next-token loss on the text after it.

Isolated attention and span key/value reuse are decided here too (`configure`), once per run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from domainlm.backbone import DTYPES
from domainlm.engine.inference import to_device
from domainlm.engine.model import TaggedModel
from domainlm.engine.reuse import SpanCache, longest_span_key, reused_forward
from domainlm.errors import DomainLMError
from domainlm.training import TrainableMethod, TrainConfig, grouped_batches, length_bucketed_batches


@dataclass
class Split:
    """Inputs (strings or rendered parts) and labels (None for the LM stage)."""

    inputs: list
    labels: list | None = None
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class TagSetup:
    """How a run reads its inputs: isolated domain spans, and whether their keys/values are reused."""

    isolate: bool
    reuse: bool


def configure(
    tm: TaggedModel, config: TrainConfig, function_tag: str | None, domain_tags: list[str]
) -> TagSetup:
    """Make exactly the stage's tags (and heads) trainable; decide isolation and reuse."""
    c = config
    tm.set_length_policy(c.overflow, c.max_span_tokens)
    for p in tm.parameters():
        p.requires_grad_(False)
    if c.stage == "domain":
        if not tm.causal:
            raise DomainLMError(
                f"stage 1 trains domain tags with the next-token loss; {type(tm.base).__name__} has no LM"
                " head. On an encoder, train domain tags jointly: --stage function --train-domain-tags"
            )
        tm.set_trainable(names=domain_tags)
        return TagSetup(isolate=False, reuse=False)
    if function_tag is None:
        raise DomainLMError("a function stage needs a function tag (the template's last marker)")
    if c.enrich and not tm.causal:
        raise DomainLMError("--enrich adds the next-token loss and needs a causal LM")
    tm.set_trainable(names=[function_tag] + (domain_tags if (c.train_domain_tags or c.enrich) else []))
    if tm.specs[function_tag].generative:
        return _generative_setup(tm, c, function_tag)
    head = tm.specs[function_tag].head
    default_isolate = head is not None and head.type == "regression" and tm.attention_hook
    isolate = default_isolate if c.isolate is None else c.isolate
    frozen_spans = isolate and not (c.train_domain_tags or c.enrich)
    if c.reuse and not frozen_spans:
        raise DomainLMError(
            "span reuse needs isolated attention and frozen domain tags (no --train-domain-tags/--enrich)"
        )
    return TagSetup(isolate=bool(isolate), reuse=bool(frozen_spans if c.reuse is None else c.reuse))


def _generative_setup(tm: TaggedModel, c: TrainConfig, function_tag: str) -> TagSetup:
    """A function tag without a head (<Translate>): its loss is the next-token loss on the text after it, and
    generation reads the whole prompt through the model's own cache, so spans are neither isolated nor
    reused."""
    if not tm.causal:
        raise DomainLMError(f"<{function_tag}> generates text and needs a causal LM with an LM head")
    if c.enrich:
        raise DomainLMError(f"<{function_tag}> is trained with the next-token loss already; drop --enrich")
    if c.isolate or c.reuse:
        raise DomainLMError(f"<{function_tag}> generates text: isolated spans and span reuse need a head")
    return TagSetup(isolate=False, reuse=False)


class TagMethod(TrainableMethod):
    """A TaggedModel's trainable tags and heads on a rendered training split."""

    def __init__(
        self,
        tm: TaggedModel,
        config: TrainConfig,
        train: Split,
        *,
        function_tag: str | None,
        domain_tags: list[str],
        cache: SpanCache | None = None,
    ):
        """`cache`: a span store to share (several runs on one model); by default each run makes its own."""
        self.tm, self.module, self.config, self.split = tm, tm, config, train
        setup = configure(tm, config, function_tag, domain_tags)
        self.isolate, self.reuse = setup.isolate, setup.reuse
        self.cache = None
        if self.reuse and cache is not None:
            if cache.tm is not tm:
                raise DomainLMError("a shared span store must belong to the model being trained")
            self.cache = cache
        elif self.reuse:
            budget = None if config.cache_budget_gb is None else int(config.cache_budget_gb * 2**30)
            dtype = DTYPES[config.cache_dtype] if config.cache_dtype else None
            self.cache = SpanCache(tm, budget_bytes=budget, dtype=dtype, disk=config.span_store)
        self.generative = function_tag is not None and tm.specs[function_tag].generative
        self.function_tag = function_tag
        self.anchors: list = []  # inputs whose mean read-out moves the head's centre (`anchor_center`)
        self.n_examples = len(train)
        self.lengths = [len(tm.encoder.encode(x, i).ids) for i, x in enumerate(train.inputs)]

    def tokens(self, batch: list[int]) -> int:
        return sum(self.lengths[i] for i in batch)

    def memory_plan(self):
        # reused spans are never back-propagated through: only the short function segment is
        return None if self.reuse else (self.tm.base.config, self.lengths)

    def parameter_groups(self, params: dict[str, torch.nn.Parameter]) -> list[dict]:
        if self.config.head_lr is None:
            return super().parameter_groups(params)
        heads = [p for n, p in params.items() if n.startswith("heads.")]
        rest = [p for n, p in params.items() if not n.startswith("heads.")]
        return [g for g in ({"params": rest}, {"params": heads, "lr": self.config.head_lr}) if g["params"]]

    def batches(self, batch_size: int, seed: int) -> list[list[int]]:
        if self.reuse and self.config.cache_budget_gb is not None:
            # A bounded store: keep examples sharing their longest span (a protein) in one batch.
            keys = [longest_span_key(self.tm, x, i) for i, x in enumerate(self.split.inputs)]
            return grouped_batches(keys, batch_size, seed)
        return length_bucketed_batches(self.lengths, batch_size, seed)

    def anchor_center(self) -> None:
        """With `head_anchors`, fix the anchor inputs (seeded) and where the centre starts: call once the head
        is initialised and before training (a resumed run does the same before loading its checkpoint)."""
        n = self.config.head_anchors
        if not n or self.config.stage != "function":
            return
        if self.generative:
            raise DomainLMError(f"head_anchors centre a head; <{self.function_tag}> writes text and has none")
        picked = random.Random(self.config.seed).sample(range(len(self.split)), min(n, len(self.split)))
        self.anchors = [self.split.inputs[i] for i in picked]
        with torch.no_grad():
            self.center_start = self.tm.heads[self.function_tag].center.clone()
            self.anchor_start = self.anchor_mean()

    def anchor_mean(self) -> torch.Tensor:
        return self.head_features(self.anchors).float().mean(dim=0)

    def moving_center(self) -> torch.Tensor:
        """The head's centre under the current tags: the start's, moved as far as the anchors' mean moved."""
        return self.center_start + self.anchor_mean() - self.anchor_start

    @torch.no_grad()
    def sync_center(self) -> None:
        """Store the moving centre in the head, so evaluation and a saved library predict as training did."""
        if self.anchors:
            self.tm.heads[self.function_tag].center.copy_(self.moving_center())

    def head_features(self, inputs: list) -> torch.Tensor:
        if self.reuse:
            return reused_forward(self.tm, self.cache, inputs).features
        encoded = self.tm.encode(inputs, isolate=self.isolate, padding_side=self.config.padding_side)
        return self.tm(**to_device(encoded, self.tm.device)).features

    def loss(self, batch: list[int]) -> torch.Tensor:
        c, split = self.config, self.split
        inputs = [split.inputs[i] for i in batch]
        labels = [split.labels[i] for i in batch] if split.labels is not None else None
        if self.anchors:
            head = self.tm.heads[self.function_tag]
            raw = head(self.head_features(inputs), center=self.moving_center())
            return head.loss(raw, self.tm.label_tensor(self.function_tag, labels).to(raw.device))
        if self.reuse:
            return reused_forward(self.tm, self.cache, inputs, labels).loss
        encoded = self.tm.encode(
            inputs,
            labels if c.stage == "function" and not self.generative else None,
            isolate=self.isolate,
            padding_side=c.padding_side,
            lm_labels=c.stage == "domain" or c.enrich or self.generative,  # a generative tag: its targets'
        )
        return self.tm(**to_device(encoded, self.tm.device), lm_weight=c.lm_weight).loss
