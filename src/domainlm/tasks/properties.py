"""Single-domain property presets: `qed` (SMILES -> RDKit QED) and `descriptor` (protein -> mean BLOSUM1).

Both follow one recipe (the issue's, and the paper's data): take the file's sorted unique inputs, shuffle them
with `random.Random(0)`, cut 80 % train, 10 % validation, 10 % test. Filters (`max_chars`, invalid inputs)
and limits apply *after* that split, so an input's split never depends on which other inputs were dropped.
Labels are computed, never shipped, and cached per file hash because QED over 12k molecules takes ~30 s.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from domainlm import cache, io
from domainlm.errors import InputError
from domainlm.features import AMINO_ACIDS, parse_smiles
from domainlm.tasks.base import Example, TaskData, TaskSpec, register_task
from domainlm.tasks.common import data_root, shuffled_split
from domainlm.tasks.featurizers import Featurizer, protein_blocks, smiles_blocks

log = logging.getLogger("domainlm.tasks")

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
STANDARD_RESIDUES = frozenset(AMINO_ACIDS)

QED_TEMPLATE = (
    "Input: The SMILES of the molecule is <SMILES> {smiles}. "
    "Output: the quantitative estimate of druglikeness score is <QED>"
)
DESCRIPTOR_TEMPLATE = (
    "Input: The protein sequence is <Protein> {protein}. Output: The descriptor value is <Descriptor>"
)


# --- validation and labels -------------------------------------------------------------------------------


def smiles_problem(smiles: str) -> str | None:
    """Why RDKit cannot use `smiles`, or None when it parses."""
    try:
        parse_smiles(smiles)
    except InputError as e:
        return str(e)
    return None


def protein_problem(sequence: str) -> str | None:
    """Why `sequence` has no BLOSUM label (empty, or not only the 20 standard residues), or None."""
    if not sequence or not sequence.strip():
        return "empty protein sequence"
    odd = sorted(set(sequence) - STANDARD_RESIDUES)
    if odd:
        return f"residue(s) {''.join(odd)!r} outside the 20 standard ones {AMINO_ACIDS}: no BLOSUM label"
    return None


def qed_label(smiles: str) -> float:
    from rdkit import Chem
    from rdkit.Chem import QED

    return float(QED.qed(Chem.MolFromSmiles(smiles)))


def blosum1_label(sequence: str) -> float:
    """The average BLOSUM1 index of the sequence (the first of the ten BLOSUM indices in `peptides`)."""
    import peptides

    return float(peptides.Peptide(sequence).blosum_indices().blosum1)


# --- split ---------------------------------------------------------------------------------------------


def split_unique(values: Sequence[str], seed: int = 0, fractions=SPLIT_FRACTIONS) -> dict[str, list[str]]:
    """Sorted unique values shuffled by `random.Random(seed)`; the first int(0.8 n) train, the next
    int(0.1 n) validation, the rest test."""
    return shuffled_split(sorted(set(values)), seed, fractions)


# --- loading -------------------------------------------------------------------------------------------


def corpus_file(data_dir, name: str) -> Path:
    path = data_root(data_dir) / "corpora" / name
    if not path.is_file():
        raise InputError("file not found (is --data the shared data directory?)", source=str(path))
    return path


def _read_id_table(path: Path) -> dict[str, str]:
    """A JSON object id -> string, as the DTC corpora are stored."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"not valid JSON: {e}", source=str(path)) from e
    if not isinstance(table, dict) or not table:
        raise InputError("expected a non-empty JSON object id -> string", source=str(path))
    for key, value in table.items():
        if not isinstance(value, str):
            raise InputError(f"expected a string, got {type(value).__name__}", source=str(path), item=key)
    return table


class LabelTable:
    """Labels (or reasons an input is invalid) for one file's inputs, computed lazily and cached on disk.

    The cache file is named by the input file's sha256 and the labelling library's version; entries only
    grow, and each save is atomic."""

    def __init__(
        self, path: Path, name: str, compute: Callable[[str], float], check, library: str, cache_root=None
    ):
        self.compute, self.check = compute, check
        key = f"{name}-{version(library)}-{cache.file_sha256(path)[:20]}"
        self.file = cache.cache_dir(cache_root) / "labels" / f"{key}.json"
        try:  # an absent or unreadable cache file is recomputed
            self.entries: dict[str, dict] = json.loads(self.file.read_text(encoding="utf-8")) or {}
        except (OSError, ValueError):
            self.entries = {}
        self._dirty = False

    def get(self, value: str) -> dict:
        """{"label": float} or {"invalid": reason}."""
        entry = self.entries.get(value)
        if entry is None:
            problem = self.check(value)
            entry = {"invalid": problem} if problem else {"label": self.compute(value)}
            self.entries[value] = entry
            self._dirty = True
        return entry

    def save(self) -> None:
        if self._dirty:
            try:
                io.write_json(self.file, self.entries)
            except OSError as e:  # a read-only home must not stop training; we only lose the speed-up
                log.warning("could not write the label cache %s: %s", self.file, e)
            self._dirty = False


_PRESET_DEFAULT = object()


@dataclass(frozen=True)
class CorpusLoader:
    """A property preset's loader (the presets' shared recipe): a JSON corpus id -> input under corpora/,
    and one computed label."""

    file: str
    field: str  # the template field the input fills
    what: str  # "molecule", "protein": for messages
    label: str  # label table name in the cache
    compute: Callable[[str], float]
    check: Callable[[str], str | None]
    library: str  # whose version keys the cache (rdkit, peptides)
    max_chars: int | None = None  # the preset's default length cut

    def __call__(
        self,
        data_dir,
        spec: TaskSpec,
        *,
        max_chars=_PRESET_DEFAULT,
        limit_train: int | None = None,
        limit_eval: int | None = None,
        skip_invalid: bool = False,
        cache_dir: str | None = None,
    ) -> TaskData:
        path = corpus_file(data_dir, self.file)
        labels = LabelTable(path, self.label, self.compute, self.check, self.library, cache_dir)
        max_chars = self.max_chars if max_chars is _PRESET_DEFAULT else max_chars
        table = _read_id_table(path)
        first_id: dict[str, str] = {}
        for item_id, value in table.items():
            first_id.setdefault(value, item_id)
        splits = split_unique(list(first_id))
        skipped: Counter = Counter()
        out: dict[str, list[Example]] = {}
        for split, values in splits.items():
            limit = limit_train if split == "train" else limit_eval
            rows: list[Example] = []
            for value in values:
                if limit is not None and len(rows) >= limit:
                    break
                if max_chars is not None and len(value) > max_chars:
                    skipped["too_long"] += 1
                    continue
                entry = labels.get(value)
                if "invalid" in entry:
                    if not skip_invalid:
                        labels.save()
                        raise InputError(
                            f"{entry['invalid']} (pass --skip-invalid to skip such {self.what}s, counted)",
                            source=str(path),
                            item=first_id[value],
                        )
                    skipped["invalid"] += 1
                    continue
                rows.append(Example(id=first_id[value], fields={self.field: value}, label=entry["label"]))
            out[split] = rows
        labels.save()
        if skipped:
            log.warning("%s: skipped %s", path, dict(skipped))
        info = {
            "source": str(path),
            "n_items": len(table),
            "n_unique": len(first_id),
            "unique_split_sizes": {k: len(v) for k, v in splits.items()},
            "max_chars": max_chars,
            "limit_train": limit_train,
            "limit_eval": limit_eval,
        }
        return TaskData(train=out["train"], val=out["val"], test=out["test"], skipped=skipped, info=info)


load_qed = CorpusLoader("dtc_ligands.json", "smiles", "molecule", "qed", qed_label, smiles_problem, "rdkit")
# max_chars=512 drops longer sequences as the paper's data did (counted as `too_long`; None keeps all).
load_descriptor = CorpusLoader(
    "dtc_proteins.json", "protein", "protein", "blosum1", blosum1_label, protein_problem, "peptides", 512
)


# Regression head, metrics (mse, mae, pearson, spearman) and selection by mse are TaskSpec's defaults.
# `paper_reference`: the test MSE on LLaMA-7B with full data in Tag-LLM (Shen et al., ICML 2024).
QED = register_task(
    TaskSpec(
        name="qed",
        template=QED_TEMPLATE,
        char_level_tags=("SMILES",),
        loader=load_qed,
        description="RDKit QED of DTC kinase ligands from their SMILES (corpora/dtc_ligands.json)",
        defaults={"epochs": 2, "lr": 1e-4},
        featurizer=Featurizer(smiles_blocks),
        paper_reference="Tag-LLaMA 0.008, LoRA 0.020, prompt tuning 1.387, linear probe 0.012, "
        "nearest neighbour 0.040",
    )
)

DESCRIPTOR = register_task(
    TaskSpec(
        name="descriptor",
        template=DESCRIPTOR_TEMPLATE,
        char_level_tags=("Protein",),
        loader=load_descriptor,
        description="mean BLOSUM1 index (peptides) of DTC kinase sequences (corpora/dtc_proteins.json)",
        defaults={"epochs": 4, "lr": 1e-4},
        featurizer=Featurizer(protein_blocks),  # amino-acid composition
        paper_reference="Tag-LLaMA 0.005, LoRA 0.006, prompt tuning 0.011, linear probe 0.041, "
        "nearest neighbour 0.012",
    )
)
