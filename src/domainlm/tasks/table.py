"""User tasks from a CSV / TSV or JSONL file: template fields are columns, one column holds the label.

Every problem is reported with the file and the line an editor would show (1-based; a CSV's header is
line 1), or, with `skip_invalid`, counted in `TaskData.skipped` and logged. Data spans after a `<SMILES>`
or `<Protein>` marker are checked with RDKit / the 20 standard residues.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from domainlm.engine.template import Template
from domainlm.errors import InputError
from domainlm.features import check_protein, parse_smiles
from domainlm.io import read_jsonl_objects, read_text
from domainlm.tasks.base import Example, TaskData
from domainlm.tasks.common import shuffled_split

log = logging.getLogger("domainlm.tasks")

# Domain tag -> check of the data span that follows it (raises InputError); the paper's two domains.
SPAN_CHECKS = {"SMILES": parse_smiles, "Protein": check_protein}
# What a split column may say, and the split it means.
VAL_NAMES = ("val", "valid", "validation", "dev")
SPLIT_NAMES = {"train": "train", **dict.fromkeys(VAL_NAMES, "val"), "test": "test"}


@dataclass
class Record:
    line: int  # 1-based line in the file, as an editor shows it
    values: dict


class RowProblem(Exception):
    """One row's problem; becomes an InputError naming file and line, or a counted skip."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def read_records(path: Path) -> tuple[list[str], list[Record]]:
    """Columns and rows of a .csv / .tsv (header line first) or .jsonl file (one JSON object a line)."""
    if not path.exists():
        raise InputError("file not found", source=str(path))
    if path.stat().st_size == 0:
        raise InputError("the file is empty", source=str(path))
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return _read_jsonl(path)
    if suffix in {".csv", ".tsv", ".txt"}:
        return _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    raise InputError(f"unsupported file type {suffix!r}; use .csv, .tsv or .jsonl", source=str(path))


def _read_csv(path: Path, delimiter: str) -> tuple[list[str], list[Record]]:
    # The csv module rather than pandas: it tracks physical line numbers through quoted newlines and
    # reports short rows as well as long ones (pandas silently pads short rows with NaN).
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise InputError("the file has no header line", source=str(path), item="line 1")
            header = [h.strip() for h in header]
            duplicated = sorted({h for h in header if header.count(h) > 1})
            if duplicated:
                raise InputError(f"duplicate column name(s) {duplicated} in the header", source=str(path))
            records = []
            start = reader.line_num + 1
            for row in reader:
                if not any(cell.strip() for cell in row):  # blank lines carry no example
                    start = reader.line_num + 1
                    continue
                if len(row) != len(header):
                    raise InputError(
                        f"{len(row)} fields where the header has {len(header)} ({', '.join(header)})",
                        source=str(path),
                        item=f"line {start}",
                    )
                records.append(Record(start, dict(zip(header, row, strict=True))))
                start = reader.line_num + 1
        except csv.Error as e:
            raise InputError(f"malformed CSV: {e}", source=str(path), item=f"line {reader.line_num}") from e
    return header, records


def _read_jsonl(path: Path) -> tuple[list[str], list[Record]]:
    records = [Record(line_no, obj) for line_no, obj in read_jsonl_objects(path)]
    columns = list(dict.fromkeys(k for r in records for k in r.values))
    return columns, records


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _regression_label(value) -> float:
    if isinstance(value, bool):
        raise RowProblem("non_numeric_label", f"label {value!r} is not a number")
    if _is_missing(value):
        raise RowProblem("missing_label", "the label is empty")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float range
        raise RowProblem("non_numeric_label", f"label {_short(value)} is not a number") from None
    if not math.isfinite(number):
        raise RowProblem("non_finite_label", f"label {_short(value)} is not a finite number")
    return number


def _short(value, limit: int = 60) -> str:
    """repr of a value for a message, cut when long (a 5,000-digit label need not be quoted whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def class_names(raw_labels: list, n_classes: int | None, classes: list[str] | None, path=None) -> list[str]:
    """Class names in index order: `classes` as given, integer labels 0..n-1 by value, else sorted strings."""
    if classes is not None:
        return [str(c) for c in classes]
    present = sorted({str(v).strip() for v in raw_labels if not _is_missing(v)})
    if present and all(_is_int(v) for v in present):
        top = max(int(float(v)) for v in present)
        return [str(i) for i in range(n_classes if n_classes is not None else top + 1)]
    if n_classes is not None and len(present) != n_classes:
        raise InputError(
            f"found {len(present)} distinct labels {present} but n_classes={n_classes}; "
            "pass the class names explicitly to say which are valid",
            source=str(path) if path else None,
        )
    return present


def _is_int(text: str) -> bool:
    """A class index: a whole, non-negative number ("2", "2.0")."""
    try:
        number = float(text)
    except ValueError:
        return False
    return math.isfinite(number) and number >= 0 and number == int(number)


def _class_label(value, index: dict[str, int]) -> int:
    if _is_missing(value):
        raise RowProblem("missing_label", "the label is empty")
    key = str(value).strip()
    if key not in index and _is_int(key):
        key = str(int(float(key)))
    if key not in index:
        raise RowProblem("unknown_class", f"label {_short(value)} is not one of the classes {list(index)}")
    return index[key]


def _split_of(value, split_column: str) -> str:
    name = SPLIT_NAMES.get(str(value).strip().lower())
    if name is None:
        raise RowProblem(
            "unknown_split",
            f"{split_column}={_short(value)}; expected train, val (valid/validation/dev) or test",
        )
    return name


def check_row(template: Template, row: dict) -> None:
    """The checks a row passes to train on (and to be predicted): every field given, valid domain spans."""
    for name in template.fields:
        if name not in row or _is_missing(row[name]):
            raise RowProblem("missing_field", f"empty or missing value for template field {name!r}")
    try:
        parts = template.render(row)
    except InputError as e:  # e.g. a value its format spec cannot format
        raise RowProblem("bad_field", str(e)) from None
    for part in parts:
        check = SPAN_CHECKS.get(part.domain or "")
        if part.kind == "data" and check:
            try:
                check(part.value)
            except InputError as e:
                raise RowProblem(f"invalid_{part.domain.lower()}", str(e)) from None


def load_table_task(
    path: str | os.PathLike,
    template: str | Template,
    label_column: str,
    head: str = "regression",
    n_classes: int | None = None,
    id_column: str | None = None,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    skip_invalid: bool = False,
    split_column: str | None = None,
    classes: list[str] | None = None,
) -> TaskData:
    """A TaskData from a user file.

    Rows are shuffled with `random.Random(seed)` and cut by the `split` fractions, unless `split_column`
    names a column holding train / val / test. Classification labels may be strings (classes sorted, or
    as `classes` lists them) or integer indices; `TaskData.info["classes"]` keeps the index -> name map.
    """
    path = Path(path)
    template = template if isinstance(template, Template) else Template(template)
    if head not in {"regression", "classification"}:
        raise InputError(f"head must be regression or classification, got {head!r}")
    _check_fractions(split)
    columns, records = read_records(path)
    if not records:
        raise InputError("the file holds no data rows", source=str(path))
    needed = [label_column] + [c for c in (id_column, split_column) if c]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise InputError(f"column(s) {missing} not found; the file has columns {columns}", source=str(path))
    template.check_columns(columns, source=str(path))

    class_list = None
    if head == "classification":
        class_list = class_names([r.values.get(label_column) for r in records], n_classes, classes, path)
        if len(class_list) < 2:
            raise InputError(
                f"a classification task needs >= 2 classes, found {class_list}", source=str(path)
            )
    index = {name: i for i, name in enumerate(class_list or [])}

    skipped: Counter = Counter()
    examples: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    unsplit: list[Example] = []
    for record in records:
        row = record.values
        try:
            check_row(template, row)
            raw = row.get(label_column)
            label = _class_label(raw, index) if class_list else _regression_label(raw)
            which = _split_of(row.get(split_column), split_column) if split_column else None
            if id_column and _is_missing(row.get(id_column)):
                raise RowProblem("missing_id", f"empty or missing {id_column!r}")
        except RowProblem as problem:
            if not skip_invalid:
                raise InputError(
                    f"{problem} (pass --skip-invalid to skip such rows, counted)",
                    source=str(path),
                    item=f"line {record.line}",
                ) from None
            skipped[problem.reason] += 1
            continue
        item_id = str(row[id_column]) if id_column else f"line {record.line}"
        fields = {f: row[f] for f in template.fields}
        example = Example(id=item_id, fields=fields, label=label, line=record.line)
        (examples[which] if which else unsplit).append(example)

    if unsplit:
        examples = shuffled_split(unsplit, seed, split)
    if skipped:
        log.warning("%s: skipped %s", path, dict(skipped))
    if not examples["train"]:
        raise InputError("no training rows are left after splitting and skipping", source=str(path))
    info = {"source": str(path), "label_column": label_column, "n_rows": len(records)}
    if class_list:
        info["classes"] = class_list
    return TaskData(**examples, skipped=skipped, info=info)


def _check_fractions(split) -> None:
    if len(split) != 3 or any(f < 0 for f in split) or not math.isclose(sum(split), 1.0, abs_tol=1e-6):
        raise InputError(f"split fractions must be three non-negative numbers summing to 1, got {split}")
