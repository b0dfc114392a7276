"""Drug-target binding affinity (`dta`): any data set in the DeepDTA layout, Davis by default.

Layout (as in DeepDTA's data/<name>/ folders):

* `Y`: pickled numpy matrix, drugs x proteins; NaN means "not measured". Read with an unpickler that builds
  numpy arrays and nothing else, so a crafted file cannot run code.
* `ligands_can.txt`, `proteins.txt`: JSON objects id -> SMILES / sequence; key order is the row / column
  order of Y.
* `folds/train_fold_setting1.txt` (a list of 5 lists of indices), `folds/test_fold_setting1.txt` (one list).
  Indices point into the measured entries of Y in row-major order: `rows, cols = np.where(~np.isnan(Y))`.

Protocol: the test fold is the test split. Of the train folds, `val_fold` (default 0, the first) is held out
as the validation split for early stopping and model selection and the others train; `val_fold=None` trains on
all of them with an empty validation split (DeepDTA's final setting). The test fold never trains or validates.

Data sets: `dataset=davis` or `dataset=kiba` (dta/<name> under the shared data root) or any folder in this
layout (`dataset=PATH`). Davis and KIBA are recognised by their size as DeepDTA publishes them, which sets
their affinity scale (Davis: Kd in nM, read as pKd; KIBA: scores, read as they are) and the published results
shown beside ours; any other folder has no published results here and must say its scale (`affinity=`).
"""

from __future__ import annotations

import codecs
import json
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domainlm.errors import InputError
from domainlm.features import check_protein, parse_smiles
from domainlm.tasks.base import Example, TaskData, TaskSpec, register_task
from domainlm.tasks.common import limit_examples, resolve_dataset_dir
from domainlm.tasks.featurizers import Featurizer, protein_blocks, smiles_blocks

DTA_TEMPLATE = (
    "Input: The protein sequence is <Protein> {protein}. The SMILES of the drug is <SMILES> {smiles}. "
    "Output: The binding affinity is <BA>"
)
Y_FILE = "Y"
LIGANDS_FILE = "ligands_can.txt"
PROTEINS_FILE = "proteins.txt"
TRAIN_FOLDS_FILE = "folds/train_fold_setting1.txt"
TEST_FOLD_FILE = "folds/test_fold_setting1.txt"


@dataclass(frozen=True)
class AffinityTransform:
    description: str
    function: object  # np.ndarray -> np.ndarray
    needs_positive: bool = False


AFFINITY_TRANSFORMS = {
    "pkd": AffinityTransform("Kd in nM -> pKd = -log10(Kd / 1e9)", lambda v: -np.log10(v / 1e9), True),
    "log10": AffinityTransform("log10 of the stored value", np.log10, True),
    "none": AffinityTransform("the stored value as is (already pKd, KIBA score, ...)", lambda v: v),
}


@dataclass(frozen=True)
class PublishedDataset:
    """A data set as DeepDTA publishes it: its size (which recognises it), the affinity scale its published
    results use, and those results (setting 1: trained on the five train folds, scored on the test fold)."""

    shape: tuple[int, int]  # drugs x proteins
    n_measured: int
    affinity: str
    anchors: tuple[tuple[str, dict[str, float]], ...]


# Sizes: DeepDTA (Öztürk et al., Bioinformatics 2018), Table 1. Anchors (test MSE / CI): DeepDTA, Tables 3
# and 4; GraphDTA (Nguyen et al., Bioinformatics 2021), Tables 2 and 3, its best model per data set (GIN on
# Davis, GAT_GCN on KIBA). Only figures with a paper to cite are shown.
PUBLISHED_DATASETS = {
    "davis": PublishedDataset(
        (68, 442),
        30056,
        "pkd",
        (
            ("DeepDTA (Davis)", {"mse": 0.261, "ci": 0.878}),
            ("GraphDTA (Davis)", {"mse": 0.229, "ci": 0.893}),
        ),
    ),
    "kiba": PublishedDataset(
        (2111, 229),
        118254,
        "none",
        (
            ("DeepDTA (KIBA)", {"mse": 0.194, "ci": 0.863}),
            ("GraphDTA (KIBA)", {"mse": 0.139, "ci": 0.891}),
        ),
    ),
}
DEFAULT_DATASET = "davis"


def load_dta(
    data_dir,
    spec: TaskSpec,
    *,
    dataset: str | None = None,
    affinity: str | None = "auto",
    val_fold: int | None = 0,
    skip_invalid: bool = False,
    limit_train: int | None = None,
    limit_eval: int | None = None,
) -> TaskData:
    """Load a DeepDTA-layout data set: `dataset` is davis, kiba or a folder path (see `dataset_folder`).

    `affinity` names an entry of `AFFINITY_TRANSFORMS` (None is "none": `--task-option affinity=none` reads
    as None); "auto" is that of the recognised data set (Davis pkd, KIBA none), and a data set domainlm does
    not recognise must name one. With `skip_invalid`, pairs whose drug SMILES, protein sequence or affinity
    is invalid are skipped and counted; otherwise the first one is an error. `limit_train` / `limit_eval`
    keep a fixed random subset of the train / each evaluation split."""
    affinity = "none" if affinity is None else affinity
    if affinity != "auto" and affinity not in AFFINITY_TRANSFORMS:
        raise InputError(
            f"unknown affinity transform {affinity!r}; known: auto, {', '.join(AFFINITY_TRANSFORMS)}"
        )
    folder = dataset_folder(data_dir, dataset)
    ligands = _read_json_object(folder / LIGANDS_FILE)
    proteins = _read_json_object(folder / PROTEINS_FILE)
    affinities = _read_matrix(folder / Y_FILE, len(ligands), len(proteins))
    rows, cols = np.where(~np.isnan(affinities))  # the measured entries, row-major: what fold indices count
    name = _recognised(affinities.shape, len(rows), dataset, folder / Y_FILE)
    published = PUBLISHED_DATASETS.get(name)
    if affinity == "auto":
        if published is None:
            raise InputError(
                "say how to read this data set's affinities: affinity=pkd (Kd in nM, as Davis) or "
                f"affinity=none (already on a log or score scale, as KIBA); it is not one of the data sets "
                f"domainlm recognises ({', '.join(PUBLISHED_DATASETS)})",
                source=str(folder),
            )
        affinity = published.affinity
    train_folds, test_fold = _read_folds(folder, len(rows))
    if val_fold is not None and not 0 <= val_fold < len(train_folds):
        raise InputError(f"val_fold must be None or in 0..{len(train_folds) - 1}, got {val_fold}")

    drug_ids, protein_ids = list(ligands), list(proteins)
    invalid_drugs = _invalid_items(ligands, folder / LIGANDS_FILE, "drug", parse_smiles, skip_invalid)
    invalid_proteins = _invalid_items(
        proteins, folder / PROTEINS_FILE, "protein", check_protein, skip_invalid
    )
    labels = _transformed(
        affinities[rows, cols],
        AFFINITY_TRANSFORMS[affinity],
        source=folder / Y_FILE,
        name_of=lambda i: f"drug {drug_ids[rows[i]]}, protein {protein_ids[cols[i]]}",
        skip_invalid=skip_invalid,
    )

    skipped: Counter = Counter()

    def examples(indices: list[int]) -> list[Example]:
        out = []
        for idx in indices:
            drug, protein = drug_ids[rows[idx]], protein_ids[cols[idx]]
            problems = {
                "invalid_smiles": drug in invalid_drugs,
                "invalid_protein": protein in invalid_proteins,
                "invalid_affinity": np.isnan(labels[idx]),
            }
            reason = next((name for name, found in problems.items() if found), None)
            if reason:
                skipped[reason] += 1
                continue
            fields = {
                "protein": proteins[protein],
                "smiles": ligands[drug],
                "protein_id": protein,
                "drug_id": drug,
            }
            out.append(
                Example(id=f"{drug}|{protein}", fields=fields, label=float(labels[idx]), group=protein)
            )
        return out

    train_indices = [i for f, fold in enumerate(train_folds) if f != val_fold for i in fold]
    val_indices = train_folds[val_fold] if val_fold is not None else []
    data = TaskData(
        train=limit_examples(examples(train_indices), limit_train),
        val=limit_examples(examples(val_indices), limit_eval),
        test=limit_examples(examples(test_fold), limit_eval),
    )
    data.skipped = skipped
    lengths = [len(s) for s in proteins.values()]
    data.info = {
        "data_dir": str(folder),
        "dataset": name or str(folder),
        "affinity": f"{affinity}: {AFFINITY_TRANSFORMS[affinity].description}",
        # Published results are on the published scale only (Davis' are pKd, not raw Kd).
        "published_anchors": list(published.anchors) if published and affinity == published.affinity else [],
        "val_fold": val_fold,
        "limit_train": limit_train,
        "limit_eval": limit_eval,
        "n_drugs": len(ligands),
        "n_proteins": len(proteins),
        "n_measured": int(len(rows)),
        "n_in_no_fold": int(len(rows) - sum(map(len, train_folds)) - len(test_fold)),
        "protein_length_max": max(lengths),
        "proteins_over_512": sum(n > 512 for n in lengths),
    }
    return data


def dataset_folder(data_dir, dataset: str | None) -> Path:
    """The folder `dataset` names. `davis` / `kiba`: dta/<name> under the shared data root `data_dir`, or
    `data_dir` itself when it holds Y. Anything else: a folder path holding Y. None: `data_dir` itself when
    it holds Y, else dta/davis under it."""
    if dataset is None or dataset in PUBLISHED_DATASETS:
        return resolve_dataset_dir(data_dir, f"dta/{dataset or DEFAULT_DATASET}", Y_FILE)
    folder = Path(str(dataset)).expanduser()
    if not (folder / Y_FILE).is_file():
        raise InputError(
            f"dataset={dataset} is neither a data set domainlm knows ({', '.join(PUBLISHED_DATASETS)}) nor a "
            f"folder holding {Y_FILE} (the DeepDTA layout)",
            source=str(folder),
        )
    return folder


def _recognised(shape: tuple[int, int], n_measured: int, asked: str | None, source: Path) -> str | None:
    """The published data set of this size, if any. One asked for by name must be it: a folder holding
    another data set would otherwise be labelled, scaled and compared as that one."""
    name = next(
        (n for n, p in PUBLISHED_DATASETS.items() if p.shape == shape and p.n_measured == n_measured), None
    )
    if asked in PUBLISHED_DATASETS and name != asked:
        expected = PUBLISHED_DATASETS[asked]
        raise InputError(
            f"dataset={asked}, but this Y is {shape[0]} drugs x {shape[1]} proteins with {n_measured} "
            f"measured pairs, and {asked} as DeepDTA publishes it has {expected.shape[0]} x "
            f"{expected.shape[1]} with {expected.n_measured}; for another data set pass its folder, "
            "dataset=PATH, with affinity=",
            source=str(source),
        )
    return name


def _read_json_object(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise InputError("file not found", source=str(path))
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))  # dicts keep the file's key order
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON ({e})", source=str(path)) from None
    if not isinstance(obj, dict) or not obj:
        raise InputError("expected a non-empty JSON object id -> string", source=str(path))
    return obj


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numbers, lists and numpy arrays only. A pickle names the functions that rebuild it, so an
    ordinary unpickler would call whatever a crafted file names; this one allows only what arrays need."""

    ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np.zeros(1).__reduce_ex__(2)[0],  # protocols 0-4
        ("numpy.core.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0],  # protocol 5
        ("_codecs", "encode"): codecs.encode,  # bytes in a protocol-2 pickle written by Python 3
    }

    def find_class(self, module: str, name: str):
        found = self.ALLOWED.get((module.replace("numpy._core", "numpy.core"), name))
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a numpy array; refused")
        return found


def _read_matrix(path: Path, n_drugs: int, n_proteins: int) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            matrix = np.asarray(_ArrayUnpickler(f, encoding="latin1").load(), dtype=np.float64)
    except Exception as e:  # a pickle can fail in many ways; all mean "not a numeric matrix"
        raise InputError(
            f"cannot read a pickled numeric matrix ({type(e).__name__}: {e})", source=str(path)
        ) from None
    if matrix.shape != (n_drugs, n_proteins):
        raise InputError(
            f"Y has shape {matrix.shape} but {LIGANDS_FILE} lists {n_drugs} drugs and {PROTEINS_FILE} "
            f"{n_proteins} proteins; expected ({n_drugs}, {n_proteins})",
            source=str(path),
        )
    if np.isinf(matrix).any():
        r, c = np.argwhere(np.isinf(matrix))[0]
        raise InputError(f"infinite affinity at row {r}, column {c}", source=str(path))
    return matrix


def _read_folds(folder: Path, n_measured: int) -> tuple[list[list[int]], list[int]]:
    """Train folds and test fold, checked: integer indices in range, no index in two places."""
    train_path, test_path = folder / TRAIN_FOLDS_FILE, folder / TEST_FOLD_FILE
    train = _read_index_lists(train_path, nested=True)
    test = _read_index_lists(test_path, nested=False)
    seen: dict[int, str] = {}
    named = [(f"train fold {k}", fold, train_path) for k, fold in enumerate(train)] + [
        ("test fold", test, test_path)
    ]
    for name, fold, path in named:
        for idx in fold:
            if not 0 <= idx < n_measured:
                raise InputError(
                    f"index {idx} is out of range: Y has {n_measured} measured entries "
                    f"(valid 0..{n_measured - 1})",
                    source=str(path),
                    item=name,
                )
            if idx in seen:
                where = "twice" if seen[idx] == name else f"also in {seen[idx]}"
                raise InputError(
                    f"index {idx} appears {where}; folds must not overlap", source=str(path), item=name
                )
            seen[idx] = name
    return train, test


def _read_index_lists(path: Path, *, nested: bool):
    if not path.is_file():
        raise InputError("fold file not found", source=str(path))
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON ({e})", source=str(path)) from None
    lists = obj if nested else [obj]
    shape_ok = isinstance(lists, list) and lists and all(isinstance(f, list) for f in lists)
    if not shape_ok or not all(isinstance(i, int) and not isinstance(i, bool) for f in lists for i in f):
        expected = "a JSON list of lists of integer indices" if nested else "a JSON list of integer indices"
        raise InputError(f"expected {expected}", source=str(path))
    return lists if nested else lists[0]


def _invalid_items(items: dict[str, str], path: Path, what: str, check, skip_invalid: bool) -> set[str]:
    """Ids whose value fails `check` (which raises InputError); raises at the first one unless skipping."""
    invalid = set()
    for key, value in items.items():
        try:
            check(value, source=str(path), item=f"{what} {key}")
        except InputError:
            if not skip_invalid:
                raise
            invalid.add(key)
    return invalid


def _transformed(
    values: np.ndarray, transform: AffinityTransform, *, source, name_of, skip_invalid
) -> np.ndarray:
    """Transformed labels; NaN where the transform is undefined (only when skipping, else an error)."""
    bad = values <= 0 if transform.needs_positive else np.zeros(len(values), dtype=bool)
    if bad.any() and not skip_invalid:
        i = int(np.argmax(bad))
        raise InputError(
            f"affinity {values[i]} is not positive, so the transform cannot take its log",
            source=str(source),
            item=name_of(i),
        )
    out = np.full(len(values), np.nan)
    out[~bad] = transform.function(values[~bad])
    return out


def prepare_prediction_rows(rows: list[dict], data_dir=None, source: str = "input", lines=None) -> list[dict]:
    """Rows to score, checked as training data is: an unparsable SMILES or a sequence with letters that are
    no residues is an error naming the line (a model would otherwise score garbage without a word)."""
    out = []
    for n, row in zip(lines or range(2, len(rows) + 2), rows):
        row = dict(row)
        item = f"line {n}"
        parse_smiles(str(row.get("smiles") or ""), source=source, item=item)
        row["protein"] = check_protein(str(row.get("protein") or ""), source=source, item=item)
        out.append(row)
    return out


def classical_blocks(examples: list[Example], train: list[Example]):
    """Morgan fingerprint of {smiles} beside the 1-mer and 2-mer composition of {protein}."""
    return smiles_blocks(examples, train) + protein_blocks(examples, train, ks=(1, 2))


DTA = register_task(
    TaskSpec(
        name="dta",
        template=DTA_TEMPLATE,
        head="regression",
        metrics=("mse", "ci", "rm2", "pearson", "spearman"),
        primary_metric="mse",
        char_level_tags=("Protein", "SMILES"),
        loader=load_dta,
        prepare_rows=prepare_prediction_rows,
        description="Drug-target binding affinity (Davis pKd by default; KIBA or any DeepDTA-layout folder).",
        defaults={"epochs": 4, "lr": 1e-4},  # the paper's BA setting
        featurizer=Featurizer(classical_blocks),  # published anchors: per data set, in TaskData.info
    )
)
