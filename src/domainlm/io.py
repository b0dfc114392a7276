"""Atomic file writes: a reader never sees a half-written file, a kill never leaves one."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from domainlm.errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are as readable as any other file
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_jsonl(path: str | os.PathLike, rows) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows))


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file (a byte-order mark is dropped); bytes that are not UTF-8 are an error naming the
    file and line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(
            f"not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})",
            source=str(path),
            item=f"line {line}",
        ) from None


def parse_json(text: str):
    """`json.loads`, raising ValueError for every way a text can fail to be read: bad syntax
    (`json.JSONDecodeError`), an integer too long for Python, or nesting too deep."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def json_error(e: ValueError, *, column_only: bool = False) -> str:
    """The whole of a JSON error, with where it is: `msg` alone cuts messages such as "Invalid control
    character at" short."""
    if not isinstance(e, json.JSONDecodeError):
        return str(e)
    where = f"column {e.colno}" if column_only else f"line {e.lineno} column {e.colno}"
    return f"{e.msg}: {where}"


def read_json(path: str | os.PathLike):
    """A JSON file; not UTF-8 or not JSON is an error naming the file and line."""
    try:
        return parse_json(read_text(path))
    except ValueError as e:
        line = e.lineno if isinstance(e, json.JSONDecodeError) else None
        raise InputError(
            f"not valid JSON ({json_error(e)})", source=str(path), item=line and f"line {line}"
        ) from None


def read_jsonl_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object is an error
    naming the file and line."""
    lines = io.StringIO(read_text(path), newline=None)  # \n, \r\n and \r end lines, as in an editor
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = parse_json(raw)
        except ValueError as e:
            raise InputError(
                f"not valid JSON ({json_error(e, column_only=True)})", source=str(path), item=f"line {number}"
            ) from None
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object", source=str(path), item=f"line {number}")
        yield number, obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
