"""Tag libraries: `tags.json` (what the tags are and which model they belong to) + `tags.safetensors`
(the tag vectors and head weights only). Several libraries merge into one tag set."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from domainlm import io
from domainlm.cache import file_sha256
from domainlm.engine.tag_specs import TagSpec
from domainlm.errors import DomainLMError, IncompatibleTagsError, InputError

FORMAT_VERSION = 1
JSON_NAME = "tags.json"
TENSORS_NAME = "tags.safetensors"
_FINGERPRINT_ROWS = 16


def embedding_fingerprint(embeddings: torch.Tensor) -> dict[str, Any]:
    """Shape plus the norms of a few evenly spaced rows: identifies a model's input embeddings across dtypes
    (fp32 / bf16 loads of one model agree to ~1e-2) while any other model differs grossly."""
    emb = embeddings.detach()
    rows = torch.linspace(0, emb.shape[0] - 1, _FINGERPRINT_ROWS).long()
    norms = emb[rows].float().norm(dim=1)
    return {"shape": list(emb.shape), "row_norms": [round(float(x), 5) for x in norms]}


def fingerprints_match(a: dict, b: dict, rtol: float = 2e-2) -> bool:
    if list(a["shape"]) != list(b["shape"]) or len(a["row_norms"]) != len(b["row_norms"]):
        return False
    x, y = torch.tensor(a["row_norms"]), torch.tensor(b["row_norms"])
    return bool(torch.allclose(x, y, rtol=rtol, atol=1e-6))


@dataclass
class TagLibrary:
    base_model: str
    fingerprint: dict[str, Any]
    hidden_size: int
    specs: dict[str, TagSpec]
    tensors: dict[str, torch.Tensor]  # "tag.<name>" -> [p, d]; "head.<name>.<param>" -> head weights
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def save(self, directory: str | os.PathLike) -> Path:
        """Atomic: the tensors land first, then the JSON that names their checksum."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with io.atomic_path(directory / TENSORS_NAME) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}, str(tmp))
            digest = file_sha256(tmp)
        meta = {
            "format_version": FORMAT_VERSION,
            "base_model": self.base_model,
            "embedding_fingerprint": self.fingerprint,
            "hidden_size": self.hidden_size,
            "tags": [s.to_dict() for s in self.specs.values()],
            "tensors_sha256": digest,
            "training": self.training,
            "metrics": self.metrics,
        }
        io.write_json(directory / JSON_NAME, meta)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TagLibrary:
        directory = Path(directory)
        if not (directory / JSON_NAME).exists() and (directory / "tags" / JSON_NAME).exists():
            directory = directory / "tags"  # a run directory: its tag library
        meta_path, tensor_path = directory / JSON_NAME, directory / TENSORS_NAME
        if not meta_path.exists() or not tensor_path.exists():
            raise DomainLMError(f"{directory} is not a tag library (needs {JSON_NAME} and {TENSORS_NAME})")
        meta = _read_meta(meta_path)
        if meta.get("tensors_sha256") and meta["tensors_sha256"] != file_sha256(tensor_path):
            raise DomainLMError(
                f"{tensor_path} does not match the checksum in {meta_path} (mixed or corrupt copy)"
            )
        specs = _read_specs(meta["tags"], meta_path)
        try:
            tensors = load_file(str(tensor_path))
        except Exception as e:  # safetensors' own error types: a truncated or foreign file
            raise InputError(f"not a safetensors file ({e})", source=str(tensor_path)) from None
        missing = [n for n in specs if f"tag.{n}" not in tensors]
        if missing:
            raise DomainLMError(f"{tensor_path}: no vectors for tag(s) {missing}")
        return cls(
            base_model=meta["base_model"],
            fingerprint=meta["embedding_fingerprint"],
            hidden_size=meta["hidden_size"],
            specs=specs,
            tensors=tensors,
            training=meta.get("training", {}),
            metrics=meta.get("metrics", {}),
            source=str(directory),
        )

    def check_compatible(self, fingerprint: dict, hidden_size: int, model_name: str) -> None:
        if hidden_size != self.hidden_size or not fingerprints_match(self.fingerprint, fingerprint):
            raise IncompatibleTagsError(
                f"tag library {self.source or ''} was made for base model {self.base_model!r} "
                f"(embeddings {self.fingerprint['shape']}), not for {model_name!r} "
                f"(embeddings {fingerprint['shape']}); tags only work with the model they were trained on"
            )

    def tensors_for(self, name: str) -> dict[str, torch.Tensor]:
        prefix = f"head.{name}."
        return {
            "tag": self.tensors[f"tag.{name}"],
            **{k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)},
        }


# tags.json's fields: name -> (what it must be, a check of a value)
_META_FIELDS = {
    "base_model": ("a string", lambda v: isinstance(v, str)),
    "hidden_size": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "embedding_fingerprint": ("{shape: [rows, width], row_norms: [numbers]}", lambda v: _is_fingerprint(v)),
    "tags": ("a list of tag objects", lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v)),
}
_OPTIONAL_FIELDS = {
    "tensors_sha256": ("a string", lambda v: isinstance(v, str)),
    "training": ("an object", lambda v: isinstance(v, dict)),
    "metrics": ("an object", lambda v: isinstance(v, dict)),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_fingerprint(value) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("shape"), list):
        return False
    norms = value.get("row_norms")
    numbers = isinstance(norms, list) and all(isinstance(x, float) or _is_int(x) for x in norms)
    return len(value["shape"]) == 2 and all(_is_int(x) for x in value["shape"]) and numbers


def _read_meta(path: Path) -> dict:
    """tags.json, every field checked: a hand-edited or foreign file is refused naming the field."""
    meta = io.read_json(path)
    if not isinstance(meta, dict):
        raise InputError("expected a JSON object", source=str(path))
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"unsupported format version {meta.get('format_version')!r}", source=str(path))
    for name, (what, ok) in _META_FIELDS.items():
        if name not in meta or not ok(meta[name]):
            raise InputError(f"field {name!r} must be {what}, got {meta.get(name)!r:.80}", source=str(path))
    for name, (what, ok) in _OPTIONAL_FIELDS.items():
        if meta.get(name) is not None and not ok(meta[name]):
            raise InputError(f"field {name!r} must be {what}, got {meta[name]!r:.80}", source=str(path))
    return meta


def _read_specs(tags: list[dict], path: Path) -> dict[str, TagSpec]:
    specs: dict[str, TagSpec] = {}
    for number, entry in enumerate(tags, start=1):
        where = {"source": str(path), "item": f"tag {number} of {len(tags)}"}
        try:
            spec = TagSpec.from_dict(entry)
        except DomainLMError as e:
            raise InputError(str(e), **where) from None
        except (TypeError, ValueError, AttributeError) as e:  # missing, unknown or mistyped fields
            raise InputError(f"not a tag spec ({e})", **where) from None
        if spec.name in specs:
            raise InputError(f"tag {spec.name!r} is listed twice", **where)
        specs[spec.name] = spec
    return specs


def merge_libraries(libraries: list[TagLibrary], on_conflict: str | dict[str, str] = "error") -> TagLibrary:
    """One tag set from several. A name held by two libraries with different values is an error unless
    `on_conflict` is "first", "last", or a dict tag name -> the winning library's directory."""
    if not libraries:
        raise DomainLMError("no tag library to merge")
    first = libraries[0]
    for lib in libraries[1:]:
        if lib.hidden_size != first.hidden_size or not fingerprints_match(lib.fingerprint, first.fingerprint):
            raise IncompatibleTagsError(
                f"tag libraries {first.source} and {lib.source} were made for different base models"
            )
    merged = TagLibrary(first.base_model, first.fingerprint, first.hidden_size, {}, {}, source="merged")
    owner: dict[str, TagLibrary] = {}
    for lib in libraries:
        for name, spec in lib.specs.items():
            if name in owner and not _same_tag(owner[name], lib, name):
                winner = _resolve(name, owner[name], lib, on_conflict)
                if winner is owner[name]:
                    continue
            owner[name] = lib
            merged.specs[name] = spec
    for name, lib in owner.items():
        for key, value in lib.tensors.items():
            if key == f"tag.{name}" or key.startswith(f"head.{name}."):
                merged.tensors[key] = value
    merged.training = {"merged_from": [lib.source for lib in libraries]}
    return merged


def _same_tag(a: TagLibrary, b: TagLibrary, name: str) -> bool:
    ta, tb = a.tensors_for(name), b.tensors_for(name)
    return (
        ta.keys() == tb.keys()
        and all(torch.equal(ta[k], tb[k]) for k in ta)
        and (a.specs[name].to_dict() == b.specs[name].to_dict())
    )


def _resolve(name: str, old: TagLibrary, new: TagLibrary, on_conflict) -> TagLibrary:
    if isinstance(on_conflict, dict) and name in on_conflict:
        want = str(Path(on_conflict[name]))
        for lib in (old, new):
            if lib.source and str(Path(lib.source)) == want:
                return lib
        raise DomainLMError(
            f"on_conflict names {want} for tag {name!r}, but neither {old.source} nor {new.source}"
        )
    if on_conflict == "first":
        return old
    if on_conflict == "last":
        return new
    raise DomainLMError(
        f"tag {name!r} has different values in {old.source} and {new.source}; say which wins "
        f"(on_conflict='first'|'last' or {{'{name}': <library dir>}}; CLI: --prefer {name}=<dir>)"
    )
