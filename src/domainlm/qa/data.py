"""PubMedQA and user QA data: items, the official and paper splits, and QA JSONL files.

One JSONL line is one item: `{"id", "question", "context", "label", "long_answer", "source", "parent_id"}`,
plus `provenance` (source id, mode, teacher, model, prompt hash) on items a teacher generated.
PubMedQA's CONTEXTS list becomes `context` by joining its paragraphs with a newline ("\\n"), so the
paragraph boundaries survive. User files need only `question`, `context` (a string or a list of
paragraphs) and `label` (also read from `answer` or `final_decision`); a missing `id` becomes
`line<N>`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from domainlm import io
from domainlm.errors import InputError

LABELS = ("yes", "no", "maybe")
SOURCES = ("original", "rewrite", "new")
SPLITS = ("official", "paper")
N_FOLDS = 10
CONTEXT_JOINER = "\n"
SPLIT_FILES = ("train", "dev", "test")

_LABEL_KEYS = ("label", "answer", "final_decision")
_CONTEXT_KEYS = ("context", "contexts")


@dataclass
class QAItem:
    """One question with its context and yes/no/maybe label; generated items point to their parent."""

    id: str
    question: str
    context: str
    label: str
    long_answer: str | None = None
    source: str = "original"  # "original" | "rewrite" | "new"
    parent_id: str | None = None  # for generated items: the training item it came from
    provenance: dict | None = None  # for generated items: teacher, model, prompt hash (see augment.pipeline)

    @classmethod
    def from_dict(
        cls, d, *, source: str | os.PathLike | None = None, line: int | str | None = None
    ) -> QAItem:
        """Validate one record; errors name the file (`source`) and `line` (a line number or an item name)."""
        item = f"line {line}" if isinstance(line, int) else line
        where = {"source": str(source) if source is not None else None, "item": item}
        if not isinstance(d, dict):
            raise InputError(f"expected a JSON object, got {type(d).__name__}", **where)
        question = stripped(d.get("question"))
        context = _context(d)
        label_key = next((k for k in _LABEL_KEYS if d.get(k) is not None), None)
        missing = [name for name, value in (("question", question), ("context", context)) if not value]
        if label_key is None:
            missing.append("label")
        if missing:
            raise InputError(f"missing or empty field(s) {missing}", **where)
        label = str(d[label_key]).strip().lower()
        if label not in LABELS:
            raise InputError(f"unknown label {d[label_key]!r}; expected one of {list(LABELS)}", **where)
        item_source = d.get("source") or "original"
        if item_source not in SOURCES:
            raise InputError(f"unknown source {item_source!r}; expected one of {list(SOURCES)}", **where)
        item_id = d.get("id")
        if item_id is None or str(item_id).strip() == "":
            if not isinstance(line, int):
                raise InputError("missing field 'id'", **where)
            item_id = f"line{line}"
        long_answer = stripped(d.get("long_answer")) or None
        parent = d.get("parent_id")
        provenance = d.get("provenance")
        if provenance is not None and not isinstance(provenance, dict):
            raise InputError(f"provenance must be a JSON object, got {type(provenance).__name__}", **where)
        return cls(
            id=str(item_id).strip(),
            question=question,
            context=context,
            label=label,
            long_answer=long_answer,
            source=item_source,
            parent_id=None if parent is None else str(parent),
            provenance=provenance,
        )


def stripped(value) -> str:
    """A string value without surrounding whitespace; anything else is empty."""
    return value.strip() if isinstance(value, str) else ""


def _context(d: dict) -> str:
    for key in _CONTEXT_KEYS:
        value = d.get(key)
        if isinstance(value, list):
            return CONTEXT_JOINER.join(str(p).strip() for p in value if str(p).strip())
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


@dataclass
class QASplits:
    train: list[QAItem]
    dev: list[QAItem]
    test: list[QAItem]

    def as_dict(self) -> dict[str, list[QAItem]]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def read_qa_jsonl(path: str | os.PathLike) -> list[QAItem]:
    """Items of a QA JSONL file; bad lines, duplicate ids and an empty file are errors."""
    path = Path(path)
    if not path.is_file():
        raise InputError("QA file not found", source=str(path))
    items: list[QAItem] = []
    seen: dict[str, int] = {}
    for number, record in io.read_jsonl_objects(path):
        item = QAItem.from_dict(record, source=path, line=number)
        if item.id in seen:
            raise InputError(
                f"duplicate id {item.id!r} (first on line {seen[item.id]})",
                source=str(path),
                item=f"line {number}",
            )
        seen[item.id] = number
        items.append(item)
    if not items:
        raise InputError("the QA file holds no items", source=str(path))
    return items


def write_qa_jsonl(path: str | os.PathLike, items) -> None:
    """Write items one per line, atomically (`provenance` only where an item has one)."""
    rows = (asdict(item) for item in items)
    io.write_jsonl(path, ({k: v for k, v in r.items() if k != "provenance" or v is not None} for r in rows))


def load_qa_dir(path: str | os.PathLike) -> QASplits:
    """A directory with train.jsonl, dev.jsonl and test.jsonl (from `data export` or `augment`)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("QA data directory not found", source=str(path))
    missing = [f"{name}.jsonl" for name in SPLIT_FILES if not (path / f"{name}.jsonl").is_file()]
    if missing:
        raise InputError(
            f"missing {missing}; expected train.jsonl, dev.jsonl and test.jsonl", source=str(path)
        )
    splits = QASplits(*(read_qa_jsonl(path / f"{name}.jsonl") for name in SPLIT_FILES))
    _check_disjoint(splits, path)
    return splits


def _check_disjoint(splits: QASplits, path: Path) -> None:
    """An id in two splits (or a generated item whose parent is not a training item) leaks labels."""
    ids = {name: {item.id for item in items} for name, items in splits.as_dict().items()}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        shared = ids[a] & ids[b]
        if shared:
            raise InputError(
                f"{len(shared)} id(s) appear in both {a} and {b}, e.g. {sorted(shared)[0]!r}",
                source=str(path),
            )
    held_out = ids["dev"] | ids["test"]
    leaked = [item.id for item in splits.train if item.parent_id in held_out]
    if leaked:
        raise InputError(
            f"generated training item {leaked[0]!r} comes from a dev/test item", source=str(path)
        )


def pubmedqa_files(data_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(ori_pqal.json, test_ground_truth.json) under `data_dir` or `data_dir/pubmedqa`."""
    base = Path(data_dir)
    for folder in (base, base / "pubmedqa"):
        if (folder / "ori_pqal.json").is_file():
            return folder / "ori_pqal.json", folder / "test_ground_truth.json"
    raise InputError(
        "PubMedQA not found: expected ori_pqal.json here or in its pubmedqa/ folder", source=str(base)
    )


def load_pubmedqa(data_dir: str | os.PathLike, split: str = "official", fold: int = 0) -> QASplits:
    """PubMedQA's 1,000 labelled items as train/dev/test.

    `official`: the 500 ids of test_ground_truth.json are test; the other 500 fall into 10 label-stratified
    folds (StratifiedKFold, shuffle, seed 0); fold `fold` is dev (50), the rest train (450).
    `paper`: file order, items 0-449 train, 450-499 dev, 500-999 test.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose from {list(SPLITS)}")
    if not 0 <= fold < N_FOLDS:
        raise InputError(f"fold must be in 0..{N_FOLDS - 1}, got {fold}")
    labelled_path, truth_path = pubmedqa_files(data_dir)
    items = _read_pqal(labelled_path)
    if split == "paper":
        return QASplits(items[:450], items[450:500], items[500:])
    if not truth_path.is_file():
        raise InputError("test_ground_truth.json not found beside ori_pqal.json", source=str(truth_path))
    truth = io.read_json(truth_path)
    if not isinstance(truth, dict | list) or not all(isinstance(i, str) for i in truth):
        raise InputError("expected a JSON object (or list) of PubMed ids", source=str(truth_path))
    by_id = {item.id: item for item in items}
    unknown = [i for i in truth if i not in by_id]
    if unknown:
        raise InputError(
            f"{len(unknown)} test id(s) not in ori_pqal.json, e.g. {unknown[0]!r}", source=str(truth_path)
        )
    test = [item for item in items if item.id in truth]
    rest = [item for item in items if item.id not in truth]
    try:
        dev_index = set(_fold_indices([item.label for item in rest], fold))
    except ValueError as e:  # scikit-learn: too few items of a label for 10 folds
        raise InputError(
            f"the official split needs its {N_FOLDS} folds: {e} ({len(rest)} items outside the test set)",
            source=str(labelled_path),
        ) from None
    train = [item for i, item in enumerate(rest) if i not in dev_index]
    dev = [item for i, item in enumerate(rest) if i in dev_index]
    return QASplits(train, dev, test)


def _fold_indices(labels: list[str], fold: int) -> list[int]:
    from sklearn.model_selection import StratifiedKFold

    _, held = list(StratifiedKFold(N_FOLDS, shuffle=True, random_state=0).split(labels, labels))[fold]
    return sorted(int(i) for i in held)


def _read_pqal(path: Path) -> list[QAItem]:
    raw = io.read_json(path)
    if not isinstance(raw, dict):
        raise InputError("expected a JSON object PubMed id -> item", source=str(path))
    items = []
    for pmid, record in raw.items():
        if not isinstance(record, dict):
            raise InputError(
                f"expected an object, got {type(record).__name__}", source=str(path), item=f"item {pmid}"
            )
        d = {
            "id": pmid,
            "question": record.get("QUESTION"),
            "context": record.get("CONTEXTS"),
            "label": record.get("final_decision"),
            "long_answer": record.get("LONG_ANSWER"),
        }
        items.append(QAItem.from_dict(d, source=path, line=f"item {pmid}"))
    return items
