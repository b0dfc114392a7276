"""Generative PEFT baselines (translation): peft prompt tuning or LoRA on the same frozen causal LM as the
tags, trained on the same pairs with the next-token loss on the target only, and generating through
`domainlm.engine.generation` as the tags do.

Without tags, the languages are named in words: `Input: French: {source} Output: English:` then the target.
Prompt tuning gets as many virtual tokens as a tagged prompt holds tag vectors (source, target and
<Translate>: 3 x the tag length); LoRA the paper's r 8, alpha 16, dropout 0.05 on the attention projections.
"""

from __future__ import annotations

import torch

from domainlm.backbone import ensure_pad_token, load, lora_targets
from domainlm.batching import pad_batch, pad_ids
from domainlm.engine.generation import Decoding, Generated, generate_batch
from domainlm.errors import DomainLMError
from domainlm.target_loss import target_loss
from domainlm.training import LoopSettings, TrainableMethod, fit, length_bucketed_batches

METHODS = ("prompt_tuning", "lora")
PLAIN_PROMPT = "Input: {src_name}: {source} Output: {tgt_name}:"


def plain_prompt(src_name: str, tgt_name: str, source: str) -> str:
    return PLAIN_PROMPT.format(src_name=src_name, tgt_name=tgt_name, source=source)


class GenerativePeft(TrainableMethod):
    """A peft-wrapped causal LM trained on (prompt, target) pairs; only peft's weights train."""

    def __init__(
        self,
        model_name: str,
        method: str,
        *,
        num_virtual_tokens: int = 30,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        dtype: str = "float32",
        seed: int = 0,
    ):
        from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model

        if method not in METHODS:
            raise DomainLMError(f"unknown generative baseline {method!r}; choose from {', '.join(METHODS)}")
        loaded = load(model_name, "generation", dtype=dtype)
        self.tokenizer = loaded.tokenizer
        ensure_pad_token(self.tokenizer)
        if method == "lora":
            config = LoraConfig(
                task_type=TaskType.CAUSAL_LM,
                r=lora_r,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                target_modules=lora_targets(loaded.config),
            )
        else:
            config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens)
        torch.manual_seed(seed)  # the adapter's initial weights
        self.module = get_peft_model(loaded.model, config)  # freezes every base weight
        self.method = method
        self.pairs: list[tuple[list[int], list[int]]] = []
        self.n_examples = 0

    # ---- training -----------------------------------------------------------------------------------
    def set_pairs(self, prompts: list[str], targets: list[str]) -> None:
        """Training pairs: prompt tokens, then " target" + EOS (the only tokens the loss covers)."""
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        self.pairs = [
            (self._ids(p, first=True), self._ids(" " + t) + eos)
            for p, t in zip(prompts, targets, strict=True)
        ]
        self.n_examples = len(self.pairs)

    def _ids(self, text: str, first: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=first)["input_ids"]

    def tokens(self, batch: list[int]) -> int:
        return sum(len(p) + len(t) for p, t in (self.pairs[i] for i in batch))

    def memory_plan(self):
        virtual = getattr(self.module.peft_config["default"], "num_virtual_tokens", None) or 0
        return self.module.config, [len(p) + len(t) + virtual for p, t in self.pairs]

    def batches(self, batch_size: int, seed: int) -> list[list[int]]:
        return length_bucketed_batches([len(p) + len(t) for p, t in self.pairs], batch_size, seed)

    def loss(self, batch: list[int]) -> torch.Tensor:
        features = [
            {"input_ids": p + t, "labels": [-100] * len(p) + t} for p, t in (self.pairs[i] for i in batch)
        ]
        encoded = pad_batch(features, self.tokenizer.pad_token_id, device=self.device)
        return target_loss(self.module, encoded["input_ids"], encoded["attention_mask"], encoded["labels"])

    def fit(self, settings: LoopSettings, log=print):
        return fit(self, settings, log=log, description=self.method)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)

    # ---- generation ---------------------------------------------------------------------------------
    def generate(self, prompts: list[str], decoding: Decoding) -> Generated:
        self.module.eval()
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        texts: dict[int, tuple[str, list[int]]] = {}
        total = Generated()
        for s in range(0, len(order), decoding.batch_size):
            idx = order[s : s + decoding.batch_size]
            ids = [self._ids(prompts[i], first=True) for i in idx]
            if self.method == "prompt_tuning":
                out = generate_batch(
                    self.module.get_base_model(), self.tokenizer, decoding, **self._embedded(ids)
                )
            else:
                batch = pad_ids(ids, self.tokenizer.pad_token_id, side="left", device=self.device)
                out = generate_batch(self.module, self.tokenizer, decoding, **batch)
            total.seconds += out.seconds
            texts.update({i: (t, ids) for i, t, ids in zip(idx, out.texts, out.token_ids)})
        total.texts = [texts[i][0] for i in range(len(prompts))]
        total.token_ids = [texts[i][1] for i in range(len(prompts))]
        return total

    @torch.no_grad()
    def _embedded(self, ids: list[list[int]]) -> dict:
        """Virtual tokens, then the prompt, left-padded as a whole: peft's own generate pads between the
        virtual tokens and the prompt, so a batched prompt would not continue as it does alone."""
        embed = self.module.get_base_model().get_input_embeddings()
        virtual = self.module.get_prompt(batch_size=1)[0]
        rows = [
            torch.cat([virtual.to(embed.weight.dtype), embed(torch.tensor(x, device=self.device))])
            for x in ids
        ]
        width = max(len(r) for r in rows)
        embeds = torch.stack([torch.cat([r.new_zeros(width - len(r), r.shape[1]), r]) for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return {"inputs_embeds": embeds, "attention_mask": mask}
