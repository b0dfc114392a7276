"""Resolving a run's options: built-in defaults <- YAML config file <- flags given on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from domainlm.errors import DomainLMError


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


def merge(defaults: dict[str, Any], config: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Flags left at None fall back to the config file, then to the defaults."""
    unknown = set(config) - set(defaults)
    if unknown:
        raise DomainLMError(f"unknown option(s) in config file: {sorted(unknown)}; known: {sorted(defaults)}")
    out = dict(defaults)
    out.update({k: v for k, v in config.items()})
    out.update({k: v for k, v in flags.items() if v is not None})
    return out


def parse_key_values(items: list[str] | None, what: str) -> dict[str, Any]:
    """["fold=2", "max_chars=none"] -> {"fold": 2, "max_chars": None} (values parsed as YAML scalars)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise DomainLMError(f"{what} must look like key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(value) if value.lower() != "none" else None
    return out
