"""Drug-combination synergy (`synergy`) on the O'Neil screen: Loewe synergy of two drugs on a cell line.

Files (in `data_dir` itself or in `data_dir/synergy`):

* `oneil_labels.csv`: an id column, then drug_a_name, drug_b_name, cell_line, synergy, fold (0..4); each
  drug pair sits in one fold only.
* `oneil_drugs.csv`: name, smiles for every drug the labels name.

Protocol (the standard 5-fold one of this data set): test fold k, validation fold (k + 1) % 5, train on the
other three. Each training pair is also added with the two drugs swapped (`swap_train`), so the model sees no
order; validation and test rows stay as given.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from domainlm.errors import InputError
from domainlm.features import morgan_fingerprints, one_hot, parse_smiles
from domainlm.tasks.base import Example, TaskData, TaskSpec, register_task
from domainlm.tasks.common import limit_examples, resolve_dataset_dir
from domainlm.tasks.featurizers import Featurizer, ids

SYNERGY_TEMPLATE = (
    "Input: Drug 1 is {drug_a}. Its SMILES is <SMILES> {smiles_a}. Drug 2 is {drug_b}. "
    "Its SMILES is <SMILES> {smiles_b}. The cell line is {cell_line}. "
    "Output: The drug combination sensitivity score is <DC>"
)
LABELS_FILE = "oneil_labels.csv"
DRUGS_FILE = "oneil_drugs.csv"
LABEL_COLUMNS = ("drug_a_name", "drug_b_name", "cell_line", "synergy", "fold")
N_FOLDS = 5


def load_synergy(
    data_dir,
    spec: TaskSpec,
    *,
    fold: int = 0,
    swap_train: bool = True,
    skip_invalid: bool = False,
    limit_train: int | None = None,
    limit_eval: int | None = None,
) -> TaskData:
    """Load O'Neil with test fold `fold`. With `skip_invalid`, rows with an unknown drug, a drug whose
    SMILES RDKit cannot parse, or a missing / non-numeric label are skipped and counted; otherwise they are
    errors. `limit_train` / `limit_eval` keep a fixed random subset of the file's rows per split (the swap
    then doubles the training rows kept)."""
    if not 0 <= fold < N_FOLDS:
        raise InputError(f"fold must be in 0..{N_FOLDS - 1}, got {fold}")
    folder = resolve_dataset_dir(data_dir, "synergy", LABELS_FILE)
    smiles, invalid_drugs = _read_drugs(folder / DRUGS_FILE, skip_invalid)
    val_fold = (fold + 1) % N_FOLDS
    data = TaskData(train=[], val=[], test=[])
    split_of = {fold: data.test, val_fold: data.val}
    labels_path = folder / LABELS_FILE
    for line, row in _read_rows(labels_path):
        try:
            example, row_fold = _example(row, line, smiles, invalid_drugs, str(labels_path))
        except _Skip as skip:
            if not skip_invalid:
                raise skip.error from None
            data.skipped[skip.reason] += 1
            continue
        split_of.get(row_fold, data.train).append(example)
    data.train = limit_examples(data.train, limit_train)
    data.val, data.test = limit_examples(data.val, limit_eval), limit_examples(data.test, limit_eval)
    if swap_train:
        data.train = [e for original in data.train for e in (original, _swapped(original))]
    data.info = {
        "data_dir": str(folder),
        "fold": fold,
        "val_fold": val_fold,
        "swap_train": swap_train,
        "limit_train": limit_train,
        "limit_eval": limit_eval,
        "n_drugs": len(smiles),
        "cell_lines": sorted({e.fields["cell_line"] for e in data.train}),
    }
    return data


class _Skip(Exception):
    def __init__(self, reason: str, error: InputError):
        self.reason, self.error = reason, error


def _example(row: dict, line: int, smiles: dict, invalid_drugs: set, source: str) -> tuple[Example, int]:
    row_id = row.get("") or f"line {line}"
    item = f"line {line} ({row_id})"

    def skip(reason: str, message: str) -> _Skip:
        return _Skip(reason, InputError(message, source=source, item=item))

    for column in ("drug_a_name", "drug_b_name"):
        drug = row[column].strip()
        if drug not in smiles:
            raise skip("unknown_drug", f"unknown drug {drug!r}: not in {DRUGS_FILE}")
        if drug in invalid_drugs:
            raise skip("invalid_smiles", f"drug {drug!r} has an invalid SMILES")
    try:
        label = float(row["synergy"])
    except ValueError:
        label = math.nan
    if not math.isfinite(label):
        raise skip("invalid_label", f"synergy {row['synergy']!r} is not a number")
    try:
        row_fold = int(row["fold"])
    except ValueError:
        row_fold = -1
    if not 0 <= row_fold < N_FOLDS:  # a broken split is never skipped silently
        raise InputError(
            f"fold {row['fold']!r} is not an integer in 0..{N_FOLDS - 1}", source=source, item=item
        )
    cell_line = row["cell_line"].strip()
    if not cell_line:
        raise skip("invalid_cell_line", "empty cell line")
    drug_a, drug_b = row["drug_a_name"].strip(), row["drug_b_name"].strip()
    fields = {
        "drug_a": drug_a,
        "drug_b": drug_b,
        "smiles_a": smiles[drug_a],
        "smiles_b": smiles[drug_b],
        "cell_line": cell_line,
    }
    return Example(id=row_id, fields=fields, label=label, group="+".join(sorted((drug_a, drug_b)))), row_fold


def _swapped(example: Example) -> Example:
    f = example.fields
    fields = {
        **f,
        "drug_a": f["drug_b"],
        "drug_b": f["drug_a"],
        "smiles_a": f["smiles_b"],
        "smiles_b": f["smiles_a"],
    }
    return Example(id=f"{example.id}|swapped", fields=fields, label=example.label, group=example.group)


def prepare_prediction_rows(rows: list[dict], data_dir, source: str = "input", lines=None) -> list[dict]:
    """Complete rows to score: SMILES looked up from drug names where not given, and the cell line checked
    against those the model could have seen in training (an unseen one is an error, naming the row)."""
    folder = resolve_dataset_dir(data_dir, "synergy", LABELS_FILE)
    smiles, _ = _read_drugs(folder / DRUGS_FILE, skip_invalid=True)
    cell_lines = {row["cell_line"].strip() for _, row in _read_rows(folder / LABELS_FILE)}
    out = []
    for n, row in zip(lines or range(2, len(rows) + 2), rows):
        row = dict(row)
        for side in ("a", "b"):
            name = str(row.get(f"drug_{side}") or "").strip()
            if not str(row.get(f"smiles_{side}") or "").strip():
                if name not in smiles:
                    raise InputError(
                        f"unknown drug {name!r} (no smiles_{side} given and not in {DRUGS_FILE})",
                        source=source,
                        item=f"line {n}",
                    )
                row[f"smiles_{side}"] = smiles[name]
        cell = str(row.get("cell_line") or "").strip()
        if cell not in cell_lines:
            raise InputError(
                f"unknown cell line {cell!r}; the model was trained on {len(cell_lines)} cell lines "
                f"of {LABELS_FILE}",
                source=source,
                item=f"line {n}",
            )
        out.append(row)
    return out


def _read_drugs(path: Path, skip_invalid: bool) -> tuple[dict[str, str], set[str]]:
    smiles: dict[str, str] = {}
    invalid: set[str] = set()
    for line, row in _read_rows(path, required=("name", "smiles")):
        name = row["name"].strip()
        if not name:
            raise InputError("empty drug name", source=str(path), item=f"line {line}")
        if name in smiles:
            raise InputError(f"drug {name!r} is listed twice", source=str(path), item=f"line {line}")
        smiles[name] = row["smiles"].strip()
        try:
            parse_smiles(smiles[name], source=str(path), item=f"line {line} ({name})")
        except InputError:
            if not skip_invalid:
                raise
            invalid.add(name)
    return smiles, invalid


def _read_rows(path: Path, required=LABEL_COLUMNS):
    """(line number, row dict) for each data row of a CSV, after checking the header and row lengths."""
    if not path.is_file():
        raise InputError("file not found", source=str(path))
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"missing column(s) {missing}; header: {reader.fieldnames}", source=str(path))
        n_rows = 0
        for row in reader:
            if None in row or any(row[c] is None for c in required):
                raise InputError(
                    f"expected {len(reader.fieldnames)} fields like the header",
                    source=str(path),
                    item=f"line {reader.line_num}",
                )
            n_rows += 1
            yield reader.line_num, row
    if n_rows == 0:
        raise InputError("no data rows", source=str(path))


def classical_blocks(examples: list[Example], train: list[Example]):
    """Sum and |difference| of the two drugs' Morgan fingerprints (the same whichever drug comes first)
    and the one-hot cell line, over the cell lines of the training split."""
    fp_a = morgan_fingerprints([e.fields["smiles_a"] for e in examples], items=ids(examples)).astype(np.int16)
    fp_b = morgan_fingerprints([e.fields["smiles_b"] for e in examples], items=ids(examples)).astype(np.int16)
    pair = np.concatenate([fp_a + fp_b, np.abs(fp_a - fp_b)], axis=1).astype(np.uint8)
    seen = sorted({e.fields["cell_line"] for e in train})
    cells = one_hot([e.fields["cell_line"] for e in examples], seen, what="cell line", items=ids(examples))
    return [("drug_pair", "tanimoto", pair), ("cell_line", "tanimoto", cells)]


SYNERGY = register_task(
    TaskSpec(
        name="synergy",
        template=SYNERGY_TEMPLATE,
        prepare_rows=prepare_prediction_rows,
        head="regression",
        metrics=("mse", "mae", "pearson"),
        primary_metric="mse",
        char_level_tags=("SMILES",),
        loader=load_synergy,
        description="Drug-combination synergy (Loewe) on the O'Neil screen, standard 5-fold protocol.",
        defaults={"epochs": 2, "lr": 1e-4},  # the paper's DC setting
        folds=tuple((f"fold{k}", {"fold": k}) for k in range(N_FOLDS)),
        featurizer=Featurizer(classical_blocks, order_free=True),
        # DeepSynergy: Preuer et al., Bioinformatics 2018
        published_anchors=(("DeepSynergy (O'Neil, 5-fold)", {"pearson": 0.73}),),
    )
)
