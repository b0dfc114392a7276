"""Resolving a run's options: built-in defaults <- YAML config file <- flags given on the command line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from domainlm.errors import DomainLMError

# Tag-engine options shared by `train` and `bench`.
IsolateOpt = Annotated[
    bool,
    typer.Option(
        "--isolate/--no-isolate",
        help="domain spans cannot see tokens before their tag (default: on for regression heads)",
    ),
]
ReuseOpt = Annotated[
    bool,
    typer.Option(
        "--reuse/--no-reuse",
        help="compute each isolated span's keys/values once and reuse them "
        "(default: whenever spans are isolated and domain tags frozen)",
    ),
]
CacheBudgetOpt = Annotated[
    float,
    typer.Option(help="memory bound for reused keys/values; when it binds, batches are grouped by span"),
]
CacheDtypeOpt = Annotated[
    str, typer.Option(help="store reused keys/values as bfloat16 or float16 (half the memory)")
]
SpanStoreOpt = Annotated[
    Path,
    typer.Option(
        help="folder that keeps reused keys/values on disk as well: a store beyond --cache-budget-gb spills "
        "there, and later runs on the same model and domain tags read them back instead of recomputing"
    ),
]
OVERFLOW_HELP = (
    "over-long inputs: error (refused before training, naming file and line), truncate (keep the start of "
    "long data spans) or window (split long spans into windows, each behind its own domain tag); counts are "
    "logged"
)
OverflowOpt = Annotated[str, typer.Option(help=OVERFLOW_HELP)]
MaxSpanOpt = Annotated[int, typer.Option(help="longest data span kept whole (truncate length / window size)")]


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise DomainLMError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DomainLMError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise DomainLMError(f"{path}: expected a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def merge(known, config: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """The options given: flags left at None fall back to the config file; options in neither (or null
    there) are left out, for their defaults to apply."""
    unknown = set(config) - set(known)
    if unknown:
        raise DomainLMError(f"unknown option(s) in config file: {sorted(unknown)}; known: {sorted(known)}")
    return {k: v for k, v in [*config.items(), *flags.items()] if v is not None}


def parse_prefer(items: list[str] | None) -> str | dict[str, str]:
    """--prefer values -> who wins a tag-library conflict: error (none), first, last or {tag: library}."""
    if not items:
        return "error"
    out = {}
    for item in items:
        if item in {"first", "last"}:
            return item
        if "=" not in item:
            raise DomainLMError(f"--prefer takes TAG=LIBRARY_DIR, 'first' or 'last'; got {item!r}")
        tag, lib = item.split("=", 1)
        out[tag] = lib
    return out


def parse_key_values(items: list[str] | None, what: str) -> dict[str, Any]:
    """["fold=2", "max_chars=none"] -> {"fold": 2, "max_chars": None} (values parsed as YAML scalars)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise DomainLMError(f"{what} must look like key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = _scalar(value)
    return out


def parse_texts(items: list[str] | None, what: str) -> dict[str, str]:
    """["FR=French", "Translate=Translate into"] -> {"FR": "French", ...}: values kept as written."""
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise DomainLMError(f"{what} must look like NAME=TEXT, got {item!r}")
        out[key.strip()] = text
    return out


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _scalar(text: str) -> Any:
    """A YAML scalar, except that `1e-3` is a number (YAML 1.1 wants `1.0e-3`) and `none` is None."""
    if text.lower() == "none":
        return None
    value = yaml.safe_load(text)
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value
