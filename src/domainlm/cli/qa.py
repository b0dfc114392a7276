"""Domain QA data commands: `data export`, `augment` (teacher-generated data), `serve` (a local teacher)."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import fields
from pathlib import Path

import typer

from domainlm import io
from domainlm.cli import app, console
from domainlm.errors import DomainLMError, InputError
from domainlm.qa.data import load_pubmedqa, load_qa_dir, pubmedqa_files, write_qa_jsonl

data_app = typer.Typer(help="Load data sets and write them as plain files.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DATA_HELP = "Data directory (holds pubmedqa/ori_pqal.json); defaults to $DOMAINLM_DATA."


def _data_dir(data: Path | None) -> Path:
    data = data or os.environ.get("DOMAINLM_DATA")
    if not data:
        raise InputError("no data directory: pass --data DIR or set DOMAINLM_DATA")
    return Path(data)


@data_app.command("export")
def export(
    dataset: str = typer.Argument(..., help="Data set to export; only 'pubmedqa' for now."),
    split: str = typer.Option(
        "official", help="'official' (test_ground_truth + 10 CV folds) or 'paper' (file order)."
    ),
    fold: int = typer.Option(0, help="Cross-validation fold used as dev for the official split (0-9)."),
    data: Path | None = typer.Option(None, help=DATA_HELP),
    out: Path = typer.Option(
        ..., help="Output directory for train.jsonl, dev.jsonl, test.jsonl and split.json."
    ),
) -> None:
    """Write a data set split as train/dev/test JSONL files, one item a line with its id."""
    if dataset != "pubmedqa":
        raise InputError(f"unknown data set {dataset!r}; choose from ['pubmedqa']")
    data_dir = _data_dir(data)
    splits = load_pubmedqa(data_dir, split, fold)
    for name, items in splits.as_dict().items():
        write_qa_jsonl(out / f"{name}.jsonl", items)
    counts = {name: len(items) for name, items in splits.as_dict().items()}
    io.write_json(out / "split.json", {**_pubmedqa_info(data_dir, split, fold), "counts": counts})
    console.print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _load_for_augment(data: Path, split: str, fold: int):
    """A train/dev/test JSONL directory when `data` holds train.jsonl, else PubMedQA with --split/--fold."""
    if (data / "train.jsonl").is_file():
        info = {"source": str(data), "format": "qa-jsonl-dir"}
        if (data / "split.json").is_file():  # written by `data export`: which split and fold this is
            info["split"] = json.loads((data / "split.json").read_text(encoding="utf-8"))
        return load_qa_dir(data), info
    return load_pubmedqa(data, split, fold), _pubmedqa_info(data, split, fold)


def _pubmedqa_info(data: Path, split: str, fold: int) -> dict:
    """Which PubMedQA split a data set is, for split.json and the augmentation manifest."""
    fold = fold if split == "official" else None
    return {"dataset": "pubmedqa", "split": split, "fold": fold, "source": str(pubmedqa_files(data)[0])}


@app.command("augment")
def augment(
    mode: str = typer.Option(
        ...,
        help="rewrite (paraphrase each item, label kept), new (new pairs from each "
        "item's context) or combined (both).",
    ),
    teacher: str = typer.Option(
        ...,
        help="OpenAI-compatible base URL (e.g. https://api.openai.com/v1, "
        "http://127.0.0.1:8000/v1) or hf:PATH for an in-process Hugging Face model.",
    ),
    model: str | None = typer.Option(
        None, help="Teacher model name sent with each request (required for URLs)."
    ),
    data: Path | None = typer.Option(
        None,
        help="A directory with train/dev/test.jsonl (e.g. `data export` "
        "output), or the PubMedQA data directory; defaults to $DOMAINLM_DATA.",
    ),
    split: str = typer.Option("official", help="PubMedQA split when --data is the PubMedQA directory."),
    fold: int = typer.Option(0, help="PubMedQA official-split fold used as dev (0-9)."),
    out: Path = typer.Option(
        ..., help="Output directory: train/dev/test/rejects JSONL, manifest.json, cache."
    ),
    n: int = typer.Option(1, help="Samples per training item and mode."),
    limit: int | None = typer.Option(None, help="Augment only the first N training items (a trial run)."),
    concurrency: int = typer.Option(8, help="Requests in flight at once."),
    rpm: float | None = typer.Option(None, help="Requests-per-minute limit (none by default)."),
    api_key_env: str | None = typer.Option(
        None,
        help="Environment variable holding the API key "
        "(default: OPENAI_API_KEY if set). The key is never logged.",
    ),
    temperature: float = typer.Option(0.7, help="Sampling temperature of the teacher."),
    max_tokens: int = typer.Option(512, help="Most tokens per teacher reply."),
    seed: int = typer.Option(0, help="Base seed; sample k is requested with seed + k."),
    prompt_dir: Path | None = typer.Option(
        None, help="Directory with rewrite.txt / new.txt templates overriding the packaged ones."
    ),
    prompt_style: str = typer.Option(
        "chat",
        help="Packaged templates: chat (instruction models, JSON replies) or fewshot (base models: "
        "few-shot prompts sent to the completions API).",
    ),
    originals: bool = typer.Option(
        True, "--originals/--no-originals", help="Start train.jsonl with the original training items."
    ),
    max_retries: int = typer.Option(
        5, help="Retries per request on 429, 5xx, timeouts and dropped connections."
    ),
    backoff: float = typer.Option(
        1.0, help="Seconds before the first retry; doubles each retry, with jitter."
    ),
    timeout: float = typer.Option(120.0, help="Seconds before a request counts as timed out."),
    cache: Path | None = typer.Option(None, help="Reply cache (SQLite); default OUT/cache.sqlite."),
    price_in: float | None = typer.Option(None, help="USD per million prompt tokens (overrides the table)."),
    price_out: float | None = typer.Option(
        None, help="USD per million completion tokens (overrides the table)."
    ),
    near_duplicate: float = typer.Option(
        0.8,
        help="Word-set Jaccard similarity at which a generated question is a near duplicate of the source "
        "question, an original or an earlier generated one, and dropped (1.0: exact duplicates only).",
    ),
    max_question_words: int = typer.Option(64, help="Generated questions longer than this are dropped."),
    max_answer_words: int = typer.Option(256, help="Generated answers longer than this are dropped."),
    min_grounding: float = typer.Option(
        0.4,
        help="Drop a generated question (off_topic) when fewer than this share of its content words occur "
        "in its source item (0: off).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Generate training data with a teacher LLM; every reply is cached, so reruns resume and cost nothing."""
    options = dict(locals())
    from domainlm.augment import AugmentConfig, make_teacher, run_augment

    data_dir = _data_dir(data)
    if out.resolve() == data_dir.resolve():
        raise InputError("--out must differ from --data (the input files would be overwritten)")
    if model is None:
        if not teacher.startswith("hf:"):
            raise InputError("--model is required for a teacher URL")
        model = Path(teacher[3:]).name
    # AugmentConfig's fields are options of the same names, but for --originals and --prompt-dir.
    options.update(model=model, include_originals=originals, prompt_dir=prompt_dir and str(prompt_dir))
    config = AugmentConfig(**{f.name: options[f.name] for f in fields(AugmentConfig)})
    splits, data_info = _load_for_augment(data_dir, split, fold)
    manifest = run_augment(
        splits,
        make_teacher(teacher, api_key_env=api_key_env, timeout=timeout),
        config,
        out,
        cache_path=cache,
        data_info=data_info,
        show_progress=progress,
    )
    counts, usage = manifest["counts"], manifest["usage_this_run"]
    cost = manifest["cost"]["estimated_usd_this_run"]
    rejects = ", ".join(f"{k} {v}" for k, v in manifest["rejects_by_reason"].items() if v) or "none"
    generated = (
        ", ".join(
            f"{mode} {n} ({shown_labels(counts['labels'][mode])})" for mode, n in counts["generated"].items()
        )
        or "none"
    )
    console.print(
        f"wrote {out}: train {counts['train_total']} ({counts['train_originals']} original, "
        f"generated: {generated}); rejects: {rejects}; requests {counts['requests_sent']} "
        f"(retries {counts['retries']}, malformed replies {counts['malformed_replies']}, "
        f"cached {counts['replies_from_cache']}); tokens this run "
        f"{usage['prompt_tokens']:,} in / {usage['completion_tokens']:,} out"
        + (f", about ${cost:.4f}" if cost is not None else "")
    )
    if counts["failed_requests"]:
        raise DomainLMError(
            f"{counts['failed_requests']} request(s) failed (rejects.jsonl says why); the outputs were "
            "written without them. Rerun the same command to retry only those."
        )


def shown_labels(counts: dict[str, int]) -> str:
    return ", ".join(f"{label} {n}" for label, n in counts.items())


@functools.cache
def _serve_limits():
    # Imported lazily: domainlm.augment pulls in the openai client, which other commands do not need.
    from domainlm.augment.server_limits import ServeLimits

    return ServeLimits


def _serve_default(name: str) -> int:
    return getattr(_serve_limits()(), name)


@app.command("serve")
def serve_command(
    model: Path = typer.Option(..., help="Local Hugging Face causal LM directory to serve."),
    port: int = typer.Option(8000, help="TCP port."),
    host: str = typer.Option(
        "127.0.0.1", help="Interface to bind; 0.0.0.0 exposes the server to the network."
    ),
    api_key_env: str | None = typer.Option(
        None,
        help="Environment variable holding the key that clients must "
        "send as a Bearer token (no key required when unset).",
    ),
    model_name: str | None = typer.Option(
        None, help="Model id clients must request (default: the directory name)."
    ),
    device: str | None = typer.Option(None, help="torch device (default: cuda when available, else cpu)."),
    max_n: int = typer.Option(_serve_default("max_n"), help="Most completions (n) one request may ask for."),
    max_tokens: int = typer.Option(
        _serve_default("max_tokens"),
        help="Most completion tokens one request may ask for (never more than the context leaves).",
    ),
    default_max_tokens: int = typer.Option(
        _serve_default("default_max_tokens"), help="Completion tokens for a request that names none."
    ),
    max_messages: int = typer.Option(_serve_default("max_messages"), help="Most messages in one request."),
    max_body_bytes: int = typer.Option(
        _serve_default("max_body_bytes"), help="Largest request body; larger ones get 413 unread."
    ),
    max_queue: int = typer.Option(
        _serve_default("max_queue"),
        help="Generations running or waiting at once; more requests get 429 with Retry-After.",
    ),
    retry_after: int = typer.Option(
        _serve_default("retry_after_s"), help="Seconds a 429 asks the client to wait."
    ),
    batch_window_ms: float = typer.Option(
        10.0, help="Milliseconds a request waits for others to share its generate call (dynamic batching)."
    ),
    max_batch_size: int = typer.Option(
        16, help="Most sequences generated together (n samples count n); 1 turns batching off."
    ),
) -> None:
    """Serve a local model as an OpenAI-compatible endpoint (/v1/chat/completions, /v1/models)."""
    from domainlm.augment.batcher import BatchSettings
    from domainlm.augment.server import serve

    batching = BatchSettings(window_ms=batch_window_ms, max_batch_size=max_batch_size)
    limits = _serve_limits()(
        max_n=max_n,
        max_tokens=max_tokens,
        default_max_tokens=min(default_max_tokens, max_tokens),
        max_messages=max_messages,
        max_body_bytes=max_body_bytes,
        max_queue=max_queue,
        retry_after_s=retry_after,
    )
    serve(
        model,
        host=host,
        port=port,
        api_key_env=api_key_env,
        model_name=model_name,
        device=device,
        limits=limits,
        batching=batching,
    )
