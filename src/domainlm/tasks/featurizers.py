"""How the classical baselines see a task: its examples as named blocks of feature columns.

Each preset names its featurizer in its `TaskSpec`; the molecule and protein blocks here are the ones the
presets share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from domainlm.features import morgan_fingerprints, protein_composition
from domainlm.tasks.base import Example

# (block name, nearest-neighbour similarity, matrix with one row per example)
Block = tuple[str, str, np.ndarray]


@dataclass(frozen=True)
class Featurizer:
    """`blocks(examples, train)` featurizes `examples`; categories (e.g. cell lines) come from `train`."""

    blocks: Callable[[list[Example], list[Example]], list[Block]]
    # Pair features that ignore the order: a swapped training copy then duplicates its original.
    order_free: bool = False


def ids(examples: list[Example]) -> list[str]:
    return [e.id for e in examples]


def smiles_blocks(examples: list[Example], _train, radius: int = 2, n_bits: int = 2048) -> list[Block]:
    """Morgan fingerprint of {smiles}."""
    fp = morgan_fingerprints(
        [e.fields["smiles"] for e in examples], radius=radius, n_bits=n_bits, items=ids(examples)
    )
    return [("morgan", "tanimoto", fp)]


def protein_blocks(examples: list[Example], _train, ks=(1,)) -> list[Block]:
    """k-mer composition of {protein}."""
    comp = protein_composition([e.fields["protein"] for e in examples], ks=ks, items=ids(examples))
    return [("protein_composition", "cosine", comp)]
