"""What every student method provides, and the registry that maps method names to them."""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from domainlm.errors import InputError
from domainlm.registry import Registry

# Modules whose import registers methods; imported on the first lookup so the CLI stays light.
_METHOD_MODULES = ("domainlm.qa.students.generative", "domainlm.qa.students.classifier")
_REGISTRY = Registry("method", attribute="method", error=InputError)
register_method = _REGISTRY.register


def _load_methods() -> None:
    for module in _METHOD_MODULES:
        importlib.import_module(module)


def method_names() -> list[str]:
    _load_methods()
    return sorted(_REGISTRY.names())


def get_method(name: str) -> type[Student]:
    _load_methods()
    return _REGISTRY.get(name)


@dataclass
class EncodedItem:
    """One example as token ids (`features`), and whether its context had to be cut."""

    features: dict[str, Any]
    truncated: bool


@dataclass
class Prediction:
    id: str
    label: str  # the gold label
    predicted: str
    matched: bool = True  # generative students: False when the answer phrase was not found (a parse failure)
    text: str | None = None  # generative students: what the model wrote
    scores: dict | None = None  # likelihood scoring: log P(answer sentence | prompt) per label


class Student:
    """A frozen base model plus trainable adapter weights, able to train on and answer QA items.

    Subclasses set `kind` ("generative" writes an answer sentence, "classifier" picks one of three labels) and
    implement building, encoding, loss and prediction; saving is the peft adapter's unless overridden."""

    method: ClassVar[str]
    kind: ClassVar[str]

    def __init__(self, config, model, tokenizer, device):
        self.config, self.model, self.tokenizer, self.device = config, model, tokenizer, device

    @classmethod
    def build(cls, config) -> Student:
        """The base model with freshly initialised adapters."""
        raise NotImplementedError

    def encode(self, item, *, train: bool) -> EncodedItem:
        """Token ids for training (`train=True`, with the target) or for prediction."""
        raise NotImplementedError

    def collate(self, features: list[dict]) -> dict:
        raise NotImplementedError

    def on_device(self, batch: dict) -> dict:
        """A collated batch with its tensors moved to the student's device."""
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}

    def forward(self, batch: dict):
        """The model on a collated batch, its tensors moved to the student's device."""
        return self.model(**self.on_device(batch))

    def loss(self, batch: dict):
        return self.forward(batch).loss

    def weigh_classes(self, labels: list[str]) -> dict[str, float] | None:
        """Per-answer loss weights from the training labels (`class_weight`), or None: unweighted."""
        return None

    def predict(self, items, decoding=None) -> list[Prediction]:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        """Write only the trained weights (and their config) into `directory`: here, the peft adapter."""
        self.model.save_pretrained(directory)

    def load_weights(self, directory: Path) -> None:
        """Load weights written by `save` into this student."""
        load_adapter(self.model, directory)

    def n_tokens(self, features: dict) -> int:
        """Input positions of one encoded example, for throughput."""
        return len(features["input_ids"])

    def trainable_parameters(self) -> dict[str, Any]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.trainable_parameters().values())
        total = sum(p.numel() for p in self.model.parameters())
        return {"trainable": trainable, "total": total}


def load_adapter(model, directory: Path) -> None:
    """Put adapter weights saved by peft's save_pretrained into an already wrapped model."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    if not (Path(directory) / "adapter_config.json").is_file():
        raise InputError("no adapter found (adapter_config.json missing)", source=str(directory))
    try:
        result = set_peft_model_state_dict(model, load_peft_weights(str(directory), device="cpu"))
    except pickle.UnpicklingError:  # peft reads a pickled adapter weights-only: anything else is refused
        raise InputError(
            "the adapter file holds objects other than tensors; refused, as loading them could run code",
            source=str(directory),
        ) from None
    except RuntimeError as e:  # shape mismatch: an adapter for another model or rank
        raise InputError(
            f"the adapter does not fit this model: {str(e).splitlines()[0]}", source=str(directory)
        ) from None
    # Prompt-learning weights load through the prompt encoder and show up as "unexpected" here.
    unexpected = [k for k in result.unexpected_keys if k != "prompt_embeddings"]
    if unexpected:
        raise InputError(
            f"the adapter does not fit this model: unexpected weights {unexpected[:3]}", source=str(directory)
        )
