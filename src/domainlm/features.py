"""Classical input features: Morgan fingerprints for molecules, k-mer composition for proteins, one-hot
categories. They feed the classical baselines; bad input raises `InputError` naming the item.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from domainlm.errors import InputError

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# IUPAC letters for unknown (X), ambiguous (B = D/N, Z = E/Q, J = I/L) and rare (U selenocysteine,
# O pyrrolysine) residues: accepted in a sequence, but a k-mer holding one is counted in no column.
OTHER_RESIDUES = "XBZJUO"
_RESIDUE_CODE = np.full(128, -2, dtype=np.int64)  # -2 invalid, -1 "other", 0..19 standard
_RESIDUE_CODE[[ord(c) for c in OTHER_RESIDUES]] = -1
_RESIDUE_CODE[[ord(c) for c in AMINO_ACIDS]] = np.arange(len(AMINO_ACIDS))


def _input_error(message: str, source: str | None, item) -> InputError:
    return InputError(message, source=source, item=item)


def parse_smiles(smiles, *, source: str | None = None, item=None):
    """An RDKit molecule, or `InputError` naming the item. Multi-fragment SMILES (salts, `Cl.`) are fine."""
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    if not isinstance(smiles, str) or not smiles.strip():
        raise _input_error(f"empty SMILES {smiles!r}", source, item)
    with BlockLogs():  # RDKit would print its own parse error to stderr; ours names the item
        mol = Chem.MolFromSmiles(smiles.strip())
    if mol is None:
        raise _input_error(f"RDKit cannot parse the SMILES {smiles!r}", source, item)
    return mol


def morgan_fingerprints(
    smiles: Sequence[str],
    *,
    radius: int = 2,
    n_bits: int = 2048,
    items: Sequence | None = None,
    source: str | None = None,
) -> np.ndarray:
    """Morgan (ECFP-like) bit vectors, shape (n, n_bits), uint8. Each distinct SMILES is computed once.

    `items` (parallel to `smiles`) names the rows in error messages; the row index is used otherwise."""
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    cache: dict[str, np.ndarray] = {}
    out = np.zeros((len(smiles), n_bits), dtype=np.uint8)
    for i, smi in enumerate(smiles):
        if smi not in cache:
            mol = parse_smiles(smi, source=source, item=items[i] if items is not None else i)
            cache[smi] = generator.GetFingerprintAsNumPy(mol)
        out[i] = cache[smi]
    return out


def check_protein(sequence, *, source: str | None = None, item=None) -> str:
    """The sequence upper-cased and stripped; `InputError` if empty or holding letters that are no residues.

    Accepted: the 20 standard amino acids plus X, B, Z, J, U, O (see `OTHER_RESIDUES`)."""
    if not isinstance(sequence, str) or not sequence.strip():
        raise _input_error("empty protein sequence", source, item)
    seq = sequence.strip().upper()
    bad = sorted({c for c in seq if ord(c) >= 128 or _RESIDUE_CODE[ord(c)] == -2})
    if bad:
        first = min(seq.index(c) for c in bad)
        raise _input_error(
            f"protein sequence holds non-standard residue(s) {''.join(bad)!r} "
            f"(first at position {first + 1}); allowed: {AMINO_ACIDS} and {OTHER_RESIDUES}",
            source,
            item,
        )
    return seq


def kmer_composition(sequence: str, k: int = 1, *, source: str | None = None, item=None) -> np.ndarray:
    """Fraction of each of the 20**k standard k-mers among all k-length windows (k=1: amino-acid composition,
    k=2: dipeptide composition). Windows holding an "other" residue count in the total, in no column."""
    seq = check_protein(sequence, source=source, item=item)
    codes = _RESIDUE_CODE[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]
    n_windows = len(codes) - k + 1
    out = np.zeros(len(AMINO_ACIDS) ** k, dtype=np.float64)
    if n_windows <= 0:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(codes, k)
    valid = (windows >= 0).all(axis=1)
    index = windows[valid] @ (len(AMINO_ACIDS) ** np.arange(k - 1, -1, -1))
    out += np.bincount(index, minlength=out.size)
    return out / n_windows


def protein_composition(
    sequences: Sequence[str],
    *,
    ks: Sequence[int] = (1, 2),
    items: Sequence | None = None,
    source: str | None = None,
) -> np.ndarray:
    """Concatenated k-mer compositions per sequence, shape (n, sum(20**k)); (1, 2) gives 20 + 400 columns."""
    cache: dict[str, np.ndarray] = {}
    out = np.zeros((len(sequences), sum(len(AMINO_ACIDS) ** k for k in ks)), dtype=np.float64)
    for i, seq in enumerate(sequences):
        if seq not in cache:
            item = items[i] if items is not None else i
            cache[seq] = np.concatenate([kmer_composition(seq, k, source=source, item=item) for k in ks])
        out[i] = cache[seq]
    return out


def one_hot(
    values: Sequence[str],
    categories: Sequence[str],
    *,
    what: str = "category",
    items: Sequence | None = None,
    source: str | None = None,
) -> np.ndarray:
    """Shape (n, len(categories)), uint8. A value outside `categories` (e.g. a cell line never seen in
    training) is an `InputError` naming it."""
    column = {c: j for j, c in enumerate(categories)}
    out = np.zeros((len(values), len(column)), dtype=np.uint8)
    for i, v in enumerate(values):
        if v not in column:
            raise _input_error(
                f"unknown {what} {v!r}; known: {', '.join(map(str, categories))}",
                source,
                items[i] if items is not None else i,
            )
        out[i, column[v]] = 1
    return out
