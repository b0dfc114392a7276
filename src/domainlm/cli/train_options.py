"""`domainlm train`'s options: their defaults and the run configuration they describe."""

from __future__ import annotations

import dataclasses
from typing import Any

from domainlm.errors import DomainLMError

TRAIN_DEFAULTS = {
    "stage": "function",
    "model": "minilm",
    "task": None,
    "data": None,
    "data_dir": None,
    "template": None,
    "label_column": None,
    "head": "regression",
    "n_classes": None,
    "id_column": None,
    "split_column": None,
    "char_level": [],
    "corpus": None,
    "tag": None,
    "text_column": None,
    "tags": [],
    "prefer": [],
    "out": None,
    "task_options": {},
    "limit_train": None,
    "limit_eval": None,
    "skip_invalid": False,
    "epochs": 2.0,
    "lr": 1e-4,
    "batch_size": 4,
    "grad_accum": 8,
    "tag_length": 10,
    "isolate": None,
    "enrich": False,
    "train_domain_tags": False,
    "seed": 0,
    "dtype": "float32",
    "device": None,
    "eval_batch_size": 32,
    "checkpoint_every": 50,
    "warmup_ratio": 0.03,
    "weight_decay": 0.0,
    "val_fraction": 0.05,
    "reuse": None,
    "cache_budget_gb": None,
    "cache_dtype": None,
    "overflow": "error",
    "max_span_tokens": None,
}


def run_config(opts: dict[str, Any]):
    """The `RunConfig` that `domainlm train`'s merged options describe."""
    from domainlm.corpus import CorpusSource
    from domainlm.runs import RunConfig
    from domainlm.tasks.resolve import TaskSource
    from domainlm.training import TrainConfig

    train = TrainConfig(**{f.name: opts[f.name] for f in dataclasses.fields(TrainConfig) if f.name in opts})
    char_level = tuple(opts["char_level"] or ())
    task = corpus = None
    if train.stage == "domain":
        corpus = CorpusSource(
            opts["corpus"],
            opts["tag"],
            opts["text_column"],
            char_level=opts["tag"] in char_level,
            val_fraction=opts["val_fraction"],
            limit=opts["limit_train"],
        )
    else:
        task = TaskSource(
            preset=opts["task"],
            data_dir=opts["data_dir"],
            task_options=opts["task_options"] or {},
            data=opts["data"],
            template=opts["template"],
            label_column=opts["label_column"],
            head=opts["head"] or "regression",
            n_classes=opts["n_classes"],
            id_column=opts["id_column"],
            split_column=opts["split_column"],
            char_level=char_level,
            limit_train=opts["limit_train"],
            limit_eval=opts["limit_eval"],
            skip_invalid=bool(opts["skip_invalid"]),
        )
    return RunConfig(
        opts["model"],
        train,
        task=task,
        corpus=corpus,
        tags=opts["tags"] or [],
        prefer=parse_prefer(opts["prefer"]),
    )


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
