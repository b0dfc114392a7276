"""Generative students: a causal LM with LoRA or prefix tuning (peft) learns to write the answer sentence.

The input is the prompt (question + context) followed by the target (long answer, then "the answer to the
question given the context is {label}."); the loss covers only the target tokens."""

from __future__ import annotations

import functools

import torch

from domainlm import backbone
from domainlm.batching import pad_batch
from domainlm.qa.data import LABELS
from domainlm.qa.students.answers import answer_sentence, parse_answer, rationale
from domainlm.qa.students.config import Decoding
from domainlm.qa.students.likelihood import best_label, continuation_ids, label_log_likelihoods
from domainlm.qa.students.prompt_fit import fit_prompt
from domainlm.qa.students.student import EncodedItem, Prediction, Student, register_method
from domainlm.target_loss import target_loss


class GenerativeStudent(Student):
    kind = "generative"

    def peft_config(self, base_config):
        raise NotImplementedError

    @classmethod
    def build(cls, config) -> GenerativeStudent:
        from peft import get_peft_model

        device = backbone.pick_device(config.device)
        torch.manual_seed(config.seed)  # adapter initialisation
        loaded = backbone.load(config.model, "generation", max_length=config.max_length)
        student = cls(config, None, loaded.tokenizer, device)
        # get_peft_model freezes every base weight; only the adapter's parameters train.
        student.model = get_peft_model(loaded.model, student.peft_config(loaded.config)).to(device)
        return student

    @functools.cached_property
    def answer_room(self) -> int:
        """Tokens kept for the target (and generated at evaluation): the long answer's budget, or the longest
        answer sentence + EOS when students learn the sentence alone."""
        if self.config.long_answer:
            return self.config.max_answer_tokens
        return max(len(continuation_ids(self, label)) for label in LABELS)

    def _prompt_ids(self, item) -> tuple[list[int], bool]:
        budget = self.config.max_length - self.answer_room
        fitted = fit_prompt(self.tokenizer, item, budget, self.config.keep_context)
        ids = self.tokenizer(fitted.text, truncation=True, max_length=budget)["input_ids"]
        return ids, fitted.truncated

    def _target_ids(self, item) -> list[int]:
        """Long answer (cut if needed) + answer sentence + EOS: the sentence always survives the cut."""
        sentence = self._ids(" " + answer_sentence(item.label))
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        room = max(0, self.config.max_answer_tokens - len(sentence) - len(eos))
        long = self._ids(" " + item.long_answer) if item.long_answer and self.config.long_answer else []
        return long[:room] + sentence + eos

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, item, *, train: bool) -> EncodedItem:
        prompt, truncated = self._prompt_ids(item)
        if not train:
            return EncodedItem({"input_ids": prompt}, truncated)
        target = self._target_ids(item)
        return EncodedItem({"input_ids": prompt + target, "labels": [-100] * len(prompt) + target}, truncated)

    def loss(self, batch: dict):
        """The target tokens' loss, with logits only where a target is predicted (see target_loss)."""
        b = self.on_device(batch)
        return target_loss(self.model, b["input_ids"], b["attention_mask"], b["labels"])

    def collate(self, features: list[dict], side: str = "right") -> dict:
        return pad_batch(features, self.tokenizer.pad_token_id, side=side)

    @torch.no_grad()
    def generate(self, items, decoding: Decoding | None = None) -> list[str]:
        """The text each item's answer continues with (prompt removed, special tokens dropped)."""
        decoding = decoding or Decoding.greedy()
        self.model.eval()
        texts = []
        size = self.config.eval_batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            batch = self.collate([self.encode(item, train=False).features for item in chunk], side="left")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out = self.model.generate(
                **batch,
                max_new_tokens=self.answer_room,
                pad_token_id=self.tokenizer.pad_token_id,
                **decoding.generate_kwargs(),
            )
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            texts.extend(self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return texts

    def predict(self, items, decoding: Decoding | None = None) -> list[Prediction]:
        if decoding is not None and decoding.answer_scoring == "likelihood":
            # a student that learned the sentence alone has no rationale to write first
            texts = self.generate(items, decoding) if self.config.long_answer else [""] * len(items)
            scores = label_log_likelihoods(self, items, [rationale(text) for text in texts])
            return [
                Prediction(item.id, item.label, best_label(s), True, text, scores=s)
                for item, text, s in zip(items, texts, scores, strict=True)
            ]
        predictions = []
        for item, text in zip(items, self.generate(items, decoding), strict=True):
            parsed = parse_answer(text)
            predictions.append(Prediction(item.id, item.label, parsed.label, parsed.matched, text))
        return predictions


@register_method("lora")
class LoraStudent(GenerativeStudent):
    """LoRA on the attention projections (the paper: rank 4, alpha swept 16..512, q/k/v/o)."""

    def peft_config(self, base_config):
        from peft import LoraConfig, TaskType

        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.config.lora_rank,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=backbone.lora_targets(base_config, self.config.target_modules),
        )


@register_method("prefix")
class PrefixStudent(GenerativeStudent):
    """Prefix tuning: n trained key/value vectors per layer in front of every input."""

    def peft_config(self, base_config):
        from peft import PrefixTuningConfig, TaskType

        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=self.config.num_virtual_tokens
        )
