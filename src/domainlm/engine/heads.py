"""Output heads read at a function tag's last position: a number (regression) or a class (classification)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from domainlm.errors import DomainLMError


@dataclass
class HeadSpec:
    """`label_mean` / `label_std` standardise regression targets so one learning rate suits QED (0-1) and
    pKd (5-10) alike; predictions come back in the original units."""

    type: str  # "regression" | "classification"
    n_classes: int | None = None
    classes: list[str] | None = None  # class names, index order
    label_mean: float = 0.0
    label_std: float = 1.0

    def __post_init__(self):
        if self.type not in {"regression", "classification"}:
            raise DomainLMError(f"head type must be 'regression' or 'classification', got {self.type!r}")
        if self.type == "classification":
            if not self.n_classes or self.n_classes < 2:
                raise DomainLMError("a classification head needs n_classes >= 2")
            if self.classes is not None and len(self.classes) != self.n_classes:
                raise DomainLMError(f"{len(self.classes)} class names given for n_classes={self.n_classes}")
        if not self.label_std > 0:
            raise DomainLMError(f"label_std must be positive, got {self.label_std}")


class Head(nn.Module):
    """A linear layer on the hidden state; starts at zero so a fresh head predicts the label mean."""

    def __init__(self, hidden_size: int, spec: HeadSpec):
        super().__init__()
        self.spec = spec
        out = 1 if spec.type == "regression" else spec.n_classes
        self.linear = nn.Linear(hidden_size, out)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Raw output: standardised value [B] or class logits [B, C]."""
        out = self.linear(hidden.float())
        return out.squeeze(-1) if self.spec.type == "regression" else out

    def predictions(self, raw: torch.Tensor) -> torch.Tensor:
        if self.spec.type == "regression":
            return raw * self.spec.label_std + self.spec.label_mean
        return raw

    def loss(self, raw: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.spec.type == "regression":
            target = (labels.float() - self.spec.label_mean) / self.spec.label_std
            return F.mse_loss(raw, target)
        return F.cross_entropy(raw, labels.long())
