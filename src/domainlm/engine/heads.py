"""Output heads read at a function tag: a number (regression) or a class (classification).

The paper's head is linear on the function tag's last vector, starting at zero. Two additions, both
optional: the read-out may be the mean over the tag's p vectors, and the head may be a small MLP. Every
head standardises its input with a fixed centre and scale (identity unless set from training read-outs
by `domainlm.engine.head_init`): a frozen LLM's states differ between inputs by ~1% of their norm and a few
dimensions dwarf the rest, which leaves a gradient-trained linear head badly conditioned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from domainlm.errors import DomainLMError

READOUTS = ("last", "mean")


@dataclass
class HeadSpec:
    """`label_mean` / `label_std` standardise regression targets so one learning rate suits QED (0-1) and
    pKd (5-10) alike; predictions come back in the original units."""

    type: str  # "regression" | "classification"
    n_classes: int | None = None
    classes: list[str] | None = None  # class names, index order
    label_mean: float = 0.0
    label_std: float = 1.0
    readout: str = "last"  # "last": the function tag's last vector (paper); "mean": mean over its p vectors
    hidden: int = 0  # 0: linear (paper); > 0: an MLP with one hidden layer this wide

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
        if self.readout not in READOUTS:
            raise DomainLMError(f"head read-out must be one of {READOUTS}, got {self.readout!r}")
        if self.hidden < 0:
            raise DomainLMError(f"head hidden width must be >= 0, got {self.hidden}")

    @property
    def outputs(self) -> int:
        return 1 if self.type == "regression" else self.n_classes


class Head(nn.Module):
    """Standardise, then linear (or MLP); the last layer starts at zero, so a fresh head predicts the label
    mean (regression) or uniform classes."""

    def __init__(self, hidden_size: int, spec: HeadSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("center", torch.zeros(hidden_size))
        self.register_buffer("scale", torch.ones(hidden_size))
        if spec.hidden:
            self.mlp = nn.Sequential(nn.Linear(hidden_size, spec.hidden), nn.GELU())
            self.linear = nn.Linear(spec.hidden, spec.outputs)
        else:
            self.mlp = None
            self.linear = nn.Linear(hidden_size, spec.outputs)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        # Libraries written before heads standardised their input hold no centre / scale: identity.
        state = dict(state)
        state.setdefault("center", torch.zeros_like(self.center))
        state.setdefault("scale", torch.ones_like(self.scale))
        return super().load_state_dict(state, strict=strict, assign=assign)

    def standardize(self, hidden: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
        return (hidden.float() - (self.center if center is None else center)) / self.scale

    def forward(self, hidden: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
        """Raw output: standardised value [B] or class logits [B, C]. `center`: in place of the stored one
        (a centre that moves with the tags while they train, `head_anchors`)."""
        x = self.standardize(hidden, center)
        out = self.linear(self.mlp(x) if self.mlp is not None else x)
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


def read_out(hidden: torch.Tensor, readout_index: torch.Tensor, spec: HeadSpec, length: int) -> torch.Tensor:
    """[B, L, d] states -> [B, d] head input: the function tag's last vector, or the mean of its `length`."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if spec.readout == "last":
        return hidden[rows, readout_index]
    offsets = torch.arange(-length + 1, 1, device=hidden.device)
    return hidden[rows.unsqueeze(1), readout_index.unsqueeze(1) + offsets].mean(dim=1)
