"""A user-level cache for values that are slow to compute and cheap to key (labels, frozen features).

Entries are keyed by content hashes, so a changed input file or model never reads a stale entry, and are
written atomically (domainlm.io), so a killed run never leaves a corrupt one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

CACHE_ENV = "DOMAINLM_CACHE"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """`override`, else $DOMAINLM_CACHE, else ~/.cache/domainlm."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "domainlm")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def texts_sha256(texts: Iterable[str]) -> str:
    """A hash of an ordered list of strings (length-prefixed, so ["ab", "c"] and ["a", "bc"] differ)."""
    digest = hashlib.sha256()
    for text in texts:
        raw = text.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()
