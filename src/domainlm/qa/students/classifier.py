"""Classification students: the same question + context, answered by a 3-way head instead of generated text,
so an encoder such as the packaged MiniLM can be a student. `seqcls-lora` puts LoRA on a sequence-
classification model (head trained in full); `tag` reads a learned function tag through the tag engine."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from domainlm import backbone
from domainlm.batching import pad_batch
from domainlm.engine.library import TagLibrary
from domainlm.engine.model import TaggedModel
from domainlm.errors import InputError
from domainlm.qa.data import LABELS
from domainlm.qa.students.prompt_fit import fit_prompt
from domainlm.qa.students.student import EncodedItem, Prediction, Student, register_method

LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}


class ClassifierStudent(Student):
    kind = "classifier"
    reserved_tokens = 0  # input positions the method adds itself (e.g. tag vectors)
    class_weights: torch.Tensor | None = None  # per answer, in LABELS order; set by `weigh_classes`

    def weigh_classes(self, labels: list[str]) -> dict[str, float] | None:
        """With `class_weight balanced`, n / (3 x count) per answer from the training labels, used by `loss`
        hereafter (a resumed run recomputes the same from the same items)."""
        if self.config.class_weight == "none":
            return None
        counts = Counter(labels)
        missing = [label for label in LABELS if not counts[label]]
        if missing:
            raise InputError(f"class_weight balanced: no training item is labelled {', '.join(missing)}")
        weights = {label: len(labels) / (len(LABELS) * counts[label]) for label in LABELS}
        self.class_weights = torch.tensor(list(weights.values()), device=self.device)
        return weights

    def loss(self, batch: dict):
        if self.class_weights is None:
            return super().loss(batch)
        labels = batch["labels"].to(self.device)
        return F.cross_entropy(self.logits(batch).float(), labels, weight=self.class_weights)

    def encode(self, item, *, train: bool) -> EncodedItem:
        budget = self.config.max_length - self.reserved_tokens
        fitted = fit_prompt(self.tokenizer, item, budget, self.config.keep_context)
        features = self.features(fitted.text)
        if train:
            features["labels"] = LABEL_INDEX[item.label]
        return EncodedItem(features, fitted.truncated)

    def features(self, text: str) -> dict:
        """What the method's model reads of the prompt text."""
        raise NotImplementedError

    def logits(self, batch: dict):
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, items, decoding=None) -> list[Prediction]:
        self.model.eval()
        predictions = []
        size = self.config.eval_batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            batch = self.collate([self.encode(item, train=False).features for item in chunk])
            for item, index in zip(chunk, self.logits(batch).argmax(-1).tolist(), strict=True):
                predictions.append(Prediction(item.id, item.label, LABELS[index]))
        return predictions


@register_method("seqcls-lora")
class SeqClsLoraStudent(ClassifierStudent):
    """AutoModelForSequenceClassification (3 labels) with LoRA on the attention projections."""

    @classmethod
    def build(cls, config) -> SeqClsLoraStudent:
        from peft import LoraConfig, TaskType, get_peft_model

        device = backbone.pick_device(config.device)
        torch.manual_seed(config.seed)  # head and adapter initialisation
        loaded = backbone.load(
            config.model,
            "classification",
            max_length=config.max_length,
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id=LABEL_INDEX,
        )
        # SEQ_CLS makes peft keep the new classification head fully trainable (and saved with the adapter).
        lora = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=backbone.lora_targets(loaded.config, config.target_modules),
        )
        return cls(config, get_peft_model(loaded.model, lora).to(device), loaded.tokenizer, device)

    def features(self, text: str) -> dict:
        features = dict(self.tokenizer(text, truncation=True, max_length=self.config.max_length))
        features.pop("offset_mapping", None)
        return features

    def collate(self, features: list[dict]) -> dict:
        return pad_batch(features, self.tokenizer.pad_token_id)

    def logits(self, batch: dict):
        return self.forward({k: v for k, v in batch.items() if k != "labels"}).logits


@register_method("tag")
class TagStudent(ClassifierStudent):
    """Tag-LLM's answer to the same task: a function tag <PubMedQA> at the end of the input, its 3-way head
    read at the tag's last position; the base model is frozen and has no adapter, only tag vectors and head
    train."""

    TAG = "PubMedQA"

    @property
    def reserved_tokens(self) -> int:
        return self.config.tag_length + 2  # the tag's vectors, plus slack for tokens merging at the cut

    @classmethod
    def build(cls, config) -> TagStudent:
        path = backbone.resolve(config.model)
        # The same clear errors as the other methods for a missing model or an over-long --max-length.
        backbone.check_length(backbone.load_config(path, config.model), config.max_length, config.model)
        device = backbone.pick_device(config.device)
        torch.manual_seed(config.seed)  # head initialisation
        tagged = TaggedModel.from_pretrained(path)
        tagged.add_tag(
            cls.TAG, kind="function", length=config.tag_length, head="classification", classes=list(LABELS)
        )
        return cls(config, tagged.to(device), tagged.tokenizer, device)

    def features(self, text: str) -> dict:
        return {"text": f"{text} <{self.TAG}>"}

    def n_tokens(self, features: dict) -> int:
        return len(self.model.encoder.encode(features["text"]).ids)

    def collate(self, features: list[dict]) -> dict:
        labels = [f["labels"] for f in features] if "labels" in features[0] else None
        return self.model.encode([f["text"] for f in features], labels=labels)

    def logits(self, batch: dict):
        return self.forward(batch).predictions

    def save(self, directory: Path) -> None:
        self.model.save_tags(Path(directory) / "tags", [self.TAG])

    def load_weights(self, directory: Path) -> None:
        """Copy saved tag vectors and head weights into this model's own parameters (in place, so an optimizer
        holding them keeps working when a run resumes)."""
        library = TagLibrary.load(Path(directory) / "tags")
        library.check_compatible(self.model.fingerprint(), self.model.hidden_size, self.model.name)
        parts = library.tensors_for(self.TAG)
        with torch.no_grad():
            self.model.tag_vectors[self.TAG].copy_(parts.pop("tag"))
        self.model.heads[self.TAG].load_state_dict(parts)
