"""Span keys/values on disk, shared by runs on the same model and domain tags.

`SpanCache` keeps spans in memory; with a disk store beside it, every span it computes is also written here,
and a span it lacks (evicted under its memory budget, or computed by an earlier run) is read back from a
memory-mapped safetensors file instead of being run through the model again. So a store larger than memory
spills to disk, and a sweep of runs computes each protein once.

Layout: `<root>/<model key>/<domain-tag digest>/shard-*.safetensors`. The model key hashes what a span's
keys/values depend on besides its tokens: the weights (every tensor's name, shape, dtype and a strided sample
of its values), the config, the stored dtype and the torch / transformers versions; the digest hashes the
domain tags' values. A changed weight or tag is a new directory, never a stale entry. A shard appears only
by renaming a finished temporary file, so a run killed while writing leaves nothing that is later read.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import uuid
import weakref
from pathlib import Path

import torch

from domainlm import io
from domainlm.errors import DomainLMError

SHARD_BYTES = 256 * 2**20  # buffered spans are written as one shard once they hold this much
SAMPLE = 4096  # values sampled from each weight tensor for the model key


def model_key(model: torch.nn.Module, stored_dtype: torch.dtype) -> str:
    """Identifies a model's keys/values: weights, config, stored dtype and library versions."""
    import transformers

    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    digest.update((config.to_json_string() if config is not None else type(model).__name__).encode())
    versions = f"torch {torch.__version__};transformers {transformers.__version__}"
    digest.update(f"{stored_dtype};{versions}".encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // SAMPLE)][:SAMPLE].float().cpu().numpy()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()[:24]


def entry_name(key: tuple[int, ...]) -> str:
    return hashlib.sha1(",".join(map(str, key)).encode()).hexdigest()


class SpanDisk:
    """Spans' keys/values as safetensors shards under `root`, for one model (`key`)."""

    def __init__(self, root: str | os.PathLike, key: str, shard_bytes: int = SHARD_BYTES):
        self.root, self.shard_bytes = Path(root) / key, shard_bytes
        self.index: dict[str, dict[str, Path]] = {}  # domain-tag digest -> entry name -> shard
        self.pending: dict[str, dict[str, torch.Tensor]] = {}  # digest -> entries not yet written
        self.pending_bytes = 0
        self.reads = self.writes = 0
        ref = weakref.ref(self)
        atexit.register(lambda: ref() is not None and ref().flush())

    def _shards(self, digest: str) -> dict[str, Path]:
        if digest not in self.index:
            from safetensors import safe_open

            found: dict[str, Path] = {}
            for shard in sorted((self.root / digest).glob("shard-*.safetensors")):
                try:
                    with safe_open(shard, framework="pt") as f:
                        found.update({name: shard for name in f.keys()})  # noqa: SIM118 (not iterable)
                except Exception as e:  # noqa: BLE001 - any unreadable shard is named, never half-used
                    raise DomainLMError(
                        f"span store {shard} is unreadable ({e}); delete it to have its spans recomputed"
                    ) from e
            self.index[digest] = found
        return self.index[digest]

    def get(self, digest: str, key: tuple[int, ...]) -> torch.Tensor | None:
        name = entry_name(key)
        if name in self.pending.get(digest, {}):
            return self.pending[digest][name]
        shard = self._shards(digest).get(name)
        if shard is None:
            return None
        from safetensors import safe_open

        with safe_open(shard, framework="pt") as f:  # memory-mapped: only this entry is read
            self.reads += 1
            return f.get_tensor(name)

    def put(self, digest: str, key: tuple[int, ...], kv: torch.Tensor) -> None:
        name = entry_name(key)
        if name in self._shards(digest) or name in self.pending.get(digest, {}):
            return
        self.pending.setdefault(digest, {})[name] = kv.detach().to("cpu").contiguous()
        self.pending_bytes += kv.numel() * kv.element_size()
        if self.pending_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the buffered spans, one shard per domain-tag digest, each by an atomic rename."""
        from safetensors.torch import save_file

        for digest, entries in self.pending.items():
            if not entries:
                continue
            path = self.root / digest / f"shard-{uuid.uuid4().hex}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            with io.atomic_path(path) as tmp:
                save_file(entries, str(tmp))
            self.writes += len(entries)
            self._shards(digest).update({name: path for name in entries})
        self.pending, self.pending_bytes = {}, 0
