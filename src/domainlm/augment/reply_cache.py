"""An SQLite store of teacher replies, written as each reply arrives.

WAL mode with a commit per reply, so a process killed at any moment loses no reply it had received: a rerun
finds every stored reply and sends only the requests whose replies never arrived. (synchronous=NORMAL: a
committed reply survives the process being killed; only a power cut or OS crash could drop the last few.)
The store also records the prompt template each mode was generated with, so replies from an edited
template are never mixed into the same output unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from domainlm.errors import InputError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY, item_id TEXT, mode TEXT, sample INTEGER, text TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, created REAL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
"""


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


def request_key(teacher: str, model: str, messages: list[dict] | str, params: dict, sample: int) -> str:
    """Hash of everything that determines a reply: the teacher, model, prompt (chat messages or a completion
    prompt), parameters, sample index."""
    blob = json.dumps(
        {
            "teacher": teacher_identity(teacher),
            "model": model,
            "messages": messages,
            "params": params,
            "sample": sample,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def teacher_identity(teacher: str) -> str:
    """The teacher as the cache knows it: its URL, less the port when the server runs on this machine
    (`domainlm serve` and benchmarks/drllama.py pick a free port each run; the model name, also in the key,
    tells local servers apart)."""
    url = urlsplit(teacher)
    if url.scheme in ("http", "https") and url.hostname in LOOPBACK:
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        return urlunsplit((url.scheme, host, url.path.rstrip("/"), "", ""))
    return teacher


class ReplyCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise InputError(f"not a usable reply cache ({e})", source=str(self.path)) from None

    def check_template(self, mode: str, sha256: str, path: str) -> None:
        """Record the template hash for `mode`, or refuse when the cache was made with another one."""
        name = f"template:{mode}"
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            with self._db:
                self._db.execute("INSERT INTO meta VALUES (?, ?)", (name, sha256))
        elif row[0] != sha256:
            raise InputError(
                f"this cache holds {mode} replies made with another prompt template (sha256 {row[0][:12]}, "
                f"now {sha256[:12]} from {path}); write to another --out, or delete the cache to regenerate",
                source=str(self.path),
            )

    def get(self, key: str) -> Reply | None:
        row = self._db.execute(
            "SELECT text, prompt_tokens, completion_tokens FROM replies WHERE key = ?", (key,)
        ).fetchone()
        return Reply(*row) if row else None

    def put(self, key: str, reply: Reply, *, item_id: str, mode: str, sample: int) -> None:
        tokens = (reply.prompt_tokens, reply.completion_tokens)
        row = (key, item_id, mode, sample, reply.text, *tokens, time.time())  # the table's column order
        with self._db:  # one transaction, committed before the next reply is handled
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()
