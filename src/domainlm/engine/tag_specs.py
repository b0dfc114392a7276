"""Tag specs and their initialisation."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch

from domainlm.engine.heads import HeadSpec
from domainlm.errors import DomainLMError

KINDS = ("domain", "function")
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


@dataclass
class TagSpec:
    name: str
    kind: str  # "domain" (before specialised data) | "function" (at the end: what to do)
    length: int = 10  # p vectors
    char_level: bool = False  # domain data tokenised one character a token, as the paper does
    head: HeadSpec | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise DomainLMError(
                f"tag name {self.name!r} must start with a letter and hold only [A-Za-z0-9_-]"
            )
        if self.kind not in KINDS:
            raise DomainLMError(f"tag {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.length, int) or isinstance(self.length, bool) or self.length < 1:
            raise DomainLMError(f"tag {self.name}: length must be an integer >= 1, got {self.length!r}")
        if not isinstance(self.char_level, bool):
            raise DomainLMError(f"tag {self.name}: char_level must be true or false, got {self.char_level!r}")
        if self.head is not None and self.kind != "function":
            raise DomainLMError(f"tag {self.name}: only function tags carry a head")

    @property
    def generative(self) -> bool:
        """A function tag without a head: the LM head writes the text after it (e.g. <Translate>)."""
        return self.kind == "function" and self.head is None

    def to_dict(self) -> dict:
        return asdict(self)  # the head too, as a plain dict

    @classmethod
    def from_dict(cls, d: dict) -> TagSpec:
        d = dict(d)
        head = d.pop("head", None)
        if head is not None and not isinstance(head, dict):
            raise DomainLMError(f"tag {d.get('name')!r}: head must be an object, got {head!r}")
        if head:
            head = {k: v for k, v in head.items() if k != "extra"}  # always empty in early libraries
        return cls(**d, head=HeadSpec(**head) if head else None)


def initial_tag(embeddings: torch.Tensor, length: int) -> torch.Tensor:
    """The paper's initialisation: the mean vocabulary embedding, rescaled to the average embedding norm,
    repeated `length` times."""
    emb = embeddings.detach().float()
    mean = emb.mean(dim=0)
    target_norm = emb.norm(dim=1).mean()
    vec = mean / mean.norm().clamp_min(1e-12) * target_norm
    return vec.unsqueeze(0).repeat(length, 1)


def text_tag(token_vectors: torch.Tensor, filler: torch.Tensor, length: int) -> torch.Tensor:
    """A tag that starts as the embeddings of some words (e.g. " French" for <FR>), so that it begins as
    something the model already reads, which a small model may need for a tag to steer it: the words end the
    tag, after `length - n` copies of `filler` (the paper's neutral mean vector); a text of `length` tokens
    or more gives its first `length`. Cycling the words to fill the tag, as PEFT's text initialisation of
    prompt tuning does, makes a model repeat them ("translation: translation: ..."). `token_vectors`:
    [n_tokens, hidden] (at least one), as the model sees them; `filler`: [hidden]."""
    words = token_vectors.detach().float()[:length]
    pad = filler.detach().float().reshape(1, -1).expand(length - len(words), -1)
    return torch.cat([pad, words])
