"""Unlabelled corpora for stage 1: plain text (one item a line), a JSON object id -> text, a CSV/JSONL
column, or one language's side of a folder of Tatoeba pairs (`--corpus DIR --language FR`). Empty lines
are skipped and counted."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from domainlm.errors import DomainLMError, InputError
from domainlm.io import read_jsonl_objects


@dataclass
class CorpusSource:
    """Stage 1's data, as a run's configuration records it: unlabelled text for one domain tag."""

    path: str | None = None
    tag: str | None = None  # the domain tag to train, e.g. SMILES
    text_column: str | None = None  # the column of a CSV/JSONL corpus
    char_level: bool = False  # the tag's data is read one character a token
    val_fraction: float = 0.05
    limit: int | None = None  # use only the first N texts
    language: str | None = None  # a Tatoeba folder as `path`: read this language's side (FR or fra)

    def __post_init__(self):
        self.path = None if self.path is None else str(self.path)  # as YAML reads it back
        if self.language and not self.tag:  # <FR> for French (fr, fra), unless named otherwise
            from domainlm.tasks.translation import LANGUAGES, language

            known = {lang.tag for lang in LANGUAGES.values()} | {lang.code for lang in LANGUAGES.values()}
            name = self.language
            self.tag = language(name).tag if name.upper() in known or name.lower() in known else name.upper()

    def read(self) -> list[str]:
        return self.read_counted()[0]

    def read_counted(self) -> tuple[list[str], Counter]:
        """The texts, and how many lines were skipped and why (empty, duplicate)."""
        if not self.path or not self.tag:
            raise DomainLMError(
                "stage domain needs --corpus (unlabelled text) and --tag (the domain tag name)"
            )
        skipped: Counter = Counter()
        if self.language:
            from domainlm.tasks.translation import read_monolingual, tatoeba_dir

            texts = read_monolingual(tatoeba_dir(self.path), self.language, skipped)
        else:
            texts = read_corpus(self.path, self.text_column, skipped)
        return (texts[: self.limit] if self.limit else texts), skipped


def read_corpus(
    path: str | Path, text_column: str | None = None, skipped: Counter | None = None
) -> list[str]:
    """The corpus's texts, stripped; empty ones are left out, counted in `skipped["empty"]`."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", source=str(path))
    if path.is_dir():
        raise InputError(
            "is a folder; give a text file, or with a folder of Tatoeba pairs the language: --language FR",
            source=str(path),
        )
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON: {e.msg}", source=str(path), item=f"line {e.lineno}") from None
        texts = list(obj.values()) if isinstance(obj, dict) else obj
        if not isinstance(texts, list) or not all(isinstance(x, str) for x in texts):
            raise InputError("expected a JSON object id -> text or a list of strings", source=str(path))
    elif suffix in {".csv", ".tsv", ".jsonl"}:
        if not text_column:
            raise InputError("pass --text-column to say which column holds the text", source=str(path))
        texts = _column(path, text_column, suffix)
    else:
        texts = path.read_text(encoding="utf-8").splitlines()
    kept = [t.strip() for t in texts if t and t.strip()]
    if skipped is not None:
        skipped["empty"] += len(texts) - len(kept)
    texts = kept
    if not texts:
        raise InputError("the corpus holds no text", source=str(path))
    return texts


def _column(path: Path, column: str, suffix: str) -> list[str]:
    out = []
    if suffix == ".jsonl":
        for n, row in read_jsonl_objects(path):
            if column not in row:
                raise InputError(f"no field {column!r}", source=str(path), item=f"line {n}")
            out.append(str(row[column]))
        return out
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
        if column not in (reader.fieldnames or []):
            raise InputError(f"no column {column!r}; columns are {reader.fieldnames}", source=str(path))
        for row in reader:
            out.append(row[column] or "")
    return out
