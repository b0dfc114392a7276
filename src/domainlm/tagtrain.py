"""What `domainlm train` and `domainlm demo` do: a run configuration in, a complete run directory out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from domainlm import backbone, metrics
from domainlm.corpus import CorpusSource
from domainlm.runs import CONFIG_FILE, RunConfig
from domainlm.tagruns import train_domain_tag, train_tagged_task
from domainlm.tasks.resolve import TaskSource, resolve_task
from domainlm.training import TrainConfig


def train_run(
    config: RunConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False
) -> dict:
    """Train what `config` describes into `out_dir`; returns the run's metrics. With `resume`, a run that
    saved its configuration continues with that one, whatever `config` says."""
    if resume and (Path(out_dir) / CONFIG_FILE).is_file():
        config = RunConfig.load(out_dir)
    backbone.resolve(config.model)  # a bad model name fails before minutes of data loading
    if config.stage == "domain":
        corpus = config.corpus or CorpusSource()
        texts, skipped = corpus.read_counted()
        return train_domain_tag(
            texts,
            corpus.tag,
            config.model,
            out_dir,
            config.train,
            char_level=corpus.char_level,
            val_fraction=corpus.val_fraction,
            tags=config.tags,
            resume=resume,
            overwrite=overwrite,
            corpus=corpus,
            skipped=skipped,
        )
    source = config.task or TaskSource()
    spec, data = resolve_task(source, seed=config.train.seed)
    result = train_tagged_task(
        spec,
        data,
        config.model,
        out_dir,
        config.train,
        tags=config.tags,
        resume=resume,
        overwrite=overwrite,
        on_conflict=config.prefer,
        source=source,
    )
    result.pop("predictions", None)
    return result


DEMO_OVERFLOW = "truncate"


def run_demo(data_dir, out_dir, *, limit_train: int, limit_eval: int, epochs: float) -> dict:
    """QED on the packaged MiniLM: domain and function tags trained jointly (an encoder has no LM head)."""
    source = TaskSource(preset="qed", data_dir=data_dir, limit_train=limit_train, limit_eval=limit_eval)
    spec, data = resolve_task(source)
    config = TrainConfig(
        epochs=epochs,
        lr=2e-3,
        batch_size=16,
        grad_accum=1,
        train_domain_tags=True,
        eval_batch_size=64,
        evals_per_epoch=1,
        # A choice of this recipe, not a default (train and bench refuse over-long inputs): about 1% of DTC
        # ligands exceed MiniLM's 512 positions; their start is kept, counted in metrics.json.
        overflow=DEMO_OVERFLOW,
    )
    result = train_tagged_task(spec, data, "minilm", out_dir, config, overwrite=True, source=source)
    labels = np.array([ex.label for ex in data.test])
    result["test_mse_mean_predictor"] = metrics.mse(
        labels, np.full_like(labels, np.mean([ex.label for ex in data.train]))
    )
    result.pop("predictions", None)
    return result
