"""What `domainlm eval` does: score a finished tag run again, as its saved configuration describes it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from domainlm import io
from domainlm.engine.model import TaggedModel
from domainlm.engine.template import Template
from domainlm.errors import DomainLMError
from domainlm.runs import finished_run_config
from domainlm.tagruns import check_lengths, evaluate_split, render_split
from domainlm.tasks.resolve import resolve_task


def evaluate_run(run_dir, *, split: str = "test", data_dir=None, data=None, device=None) -> dict:
    """Metrics of a finished run on one split of its task, or on every row of another labelled file
    (`data`); written to eval_<split>.json (eval_file.json) in the run. Attention isolation is the one
    the run trained with, as its config.yaml records it."""
    config = finished_run_config(run_dir)
    if config.task is None:
        raise DomainLMError(f"{run_dir} trained a domain tag (stage 1); there is no task to score")
    source = config.task
    if data_dir:
        source = dataclasses.replace(source, data_dir=str(data_dir))
    if data:
        source = dataclasses.replace(source, data=str(data), split_column=None)
    spec, task_data = resolve_task(source, seed=config.train.seed)
    if split not in task_data.splits():
        raise DomainLMError(f"split must be one of {list(task_data.splits())}")
    tm = TaggedModel.from_pretrained(config.model, dtype=config.train.dtype, device=device)
    tm.set_length_policy(config.train.overflow, config.train.max_span_tokens)  # as the run trained
    tm.load_tags(Path(run_dir) / "tags")
    examples = task_data.splits()[split] if not data else task_data.train + task_data.val + task_data.test
    rendered = render_split(Template(spec.template), examples, str(data or spec.name))
    where = [ex.where for ex in examples]
    check_lengths(tm, rendered.inputs, bool(config.isolate), source=task_data.info.get("source"), where=where)
    scores, _ = evaluate_split(
        tm, rendered, spec, isolate=bool(config.isolate), description=f"scoring {split}"
    )
    scores["n"] = len(examples)
    io.write_json(Path(run_dir) / f"eval_{'file' if data else split}.json", scores)
    return scores
