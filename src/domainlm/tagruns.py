"""Task-level runs: template + data + TaggedModel + the training loop -> a complete run directory.

`train_tagged_task` is what `domainlm train`, `domainlm demo` and the `bench` tag rows all call.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from domainlm import distributed, io, metrics, plots
from domainlm.backbone import process_device
from domainlm.corpus import CorpusSource
from domainlm.engine.encoding import check_fits
from domainlm.engine.head_init import initialize_head
from domainlm.engine.inference import lm_loss, predict, readout_features
from domainlm.engine.model import TaggedModel
from domainlm.engine.tag_training import Split, TagMethod
from domainlm.engine.template import Part, Template, prompt_of
from domainlm.errors import DomainLMError, InputError
from domainlm.runs import RunConfig, RunDirectory
from domainlm.tasks.base import Example, TaskData, TaskSpec
from domainlm.tasks.resolve import TaskSource
from domainlm.textmetrics import translation_scores
from domainlm.training import CHECKPOINT, TrainConfig, check_memory, fit

log = logging.getLogger("domainlm")


def prepare_tags(
    tm: TaggedModel,
    template: Template,
    spec: TaskSpec,
    train: list[Example],
    config: TrainConfig,
    *,
    classes: list[str] | None = None,
) -> bool:
    """Create the template's tags that no loaded library holds (domain tags, then the function tag + head);
    True when the function tag is new. `classes`: a classification head's class names, in index order, so
    predictions can name them."""
    if spec.head == "generation":
        return prepare_generative_tags(tm, template, train, config)
    for name in template.domain_tags:
        if name not in tm.specs:
            tm.add_tag(
                name,
                "domain",
                length=config.tag_length,
                char_level=name in spec.char_level_tags,
                init_text=config.tag_init_text.get(name),
            )
        elif tm.specs[name].kind != "domain":
            raise InputError(
                f"<{name}> is a {tm.specs[name].kind} tag but the template uses it as a domain tag"
            )
    func = template.function_tag
    if func in tm.specs:
        if tm.specs[func].kind != "function":
            raise InputError(f"<{func}> ends the template, so it must be a function tag, not a domain tag")
        head = tm.specs[func].head
        if head is None or head.type != spec.head:
            raise InputError(
                f"<{func}> from the tag library has a {head.type if head else 'missing'} head; the "
                f"task needs {spec.head}"
            )
        return False
    labels = np.array([ex.label for ex in train], dtype=float) if spec.head == "regression" else None
    tm.add_tag(
        func,
        "function",
        length=config.tag_length,
        head=spec.head,
        n_classes=spec.n_classes,
        classes=classes,
        label_mean=float(labels.mean()) if labels is not None else 0.0,
        label_std=float(labels.std()) if labels is not None and labels.std() > 0 else 1.0,
        readout=config.readout,
        head_hidden=config.head_hidden,
        init_text=config.tag_init_text.get(func),
    )
    return True


def prepare_generative_tags(tm: TaggedModel, template: Template, train: list[Example], config) -> bool:
    """A generative task (translation): its rows' domain (language) tags, normally from stage-1 libraries
    and frozen; one no library holds is created at its initial value, with a warning. The function tag has
    no head; True when it is new."""
    names = list(dict.fromkeys(t for ex in train for t in template.row_domain_tags(ex.fields)))
    for name in names:
        if name not in tm.specs:
            log.warning(
                "<%s> is in no tag library: created untrained (train it first: domainlm train --stage domain "
                "--tag %s --corpus TEXT)",
                name,
                name,
            )
            tm.add_tag(name, "domain", length=config.tag_length, init_text=config.tag_init_text.get(name))
        elif tm.specs[name].kind != "domain":
            raise InputError(f"<{name}> is a {tm.specs[name].kind} tag; the template uses it as a domain tag")
    func = template.function_tag
    if func in tm.specs:
        if not tm.specs[func].generative:
            raise InputError(f"<{func}> from the tag library has a head; a generative task needs one without")
        return False
    tm.add_tag(func, "function", length=config.tag_length, init_text=config.tag_init_text.get(func))
    return True


def generation_domain_tags(template: Template, split: list[Example]) -> list[str]:
    return list(dict.fromkeys(t for ex in split for t in template.row_domain_tags(ex.fields)))


def start_head(tm: TaggedModel, method: TagMethod, function_tag: str, config: TrainConfig) -> dict:
    """Standardise (and with "probe", fit) the new head on the untrained tags' training read-outs."""
    split = method.split

    def read(idx: list[int]):
        inputs = [split.inputs[i] for i in idx]
        return readout_features(
            tm, inputs, isolate=method.isolate, batch_size=config.eval_batch_size, cache=method.cache
        )

    features = distributed.gather_rows(read, len(split))  # each process reads its shard
    labels = tm.label_tensor(function_tag, split.labels).numpy()
    return initialize_head(tm, function_tag, features, labels, config.head_init)


def render_split(template: Template, examples: list[Example], source: str = "data") -> Split:
    inputs = [template.render(ex.fields, source=source, item=ex.id) for ex in examples]
    return Split(inputs, [ex.label for ex in examples], [ex.id for ex in examples])


def evaluate_split(
    tm: TaggedModel,
    split: Split,
    spec: TaskSpec,
    *,
    isolate: bool,
    batch_size: int = 32,
    description: str = "evaluating",
    cache=None,
    decoding: dict | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Scores and predictions; a generative task's predictions are the generated texts, scored with BLEU
    and chrF++ against its labels (the references), `decoding` holding `TaggedModel.generate` options."""

    def run(idx: list[int]) -> np.ndarray:
        inputs = [split.inputs[i] for i in idx]
        return predict(
            tm, inputs, isolate=isolate, batch_size=batch_size, description=description, cache=cache
        )

    if spec.head == "generation":
        return evaluate_generation(tm, split, batch_size=batch_size, decoding=decoding)
    preds = distributed.gather_rows(run, len(split))  # under several processes each predicts its shard
    if spec.head == "regression":
        return metrics.compute(spec.metrics, split.labels, preds.reshape(-1)), preds
    names = [m for m in spec.metrics if m in metrics.CLASSIFICATION_METRICS]
    return metrics.compute(names, split.labels, preds.argmax(-1)), preds


def evaluate_generation(
    tm: TaggedModel, split: Split, *, batch_size: int = 32, decoding: dict | None = None
) -> tuple[dict[str, float], np.ndarray]:
    """Generate from each input's prompt (its parts up to the function tag) and score against the labels."""
    prompts = [prompt_of(x) for x in split.inputs]
    spent = {"seconds": 0.0, "tokens": 0}

    def run(idx: list[int]) -> np.ndarray:
        out = tm.generate([prompts[i] for i in idx], batch_size=batch_size, details=True, **(decoding or {}))
        spent["seconds"] += out.seconds
        spent["tokens"] += out.n_tokens
        return np.array(out.texts, dtype=object)

    texts = distributed.gather_rows(run, len(split))
    scores = translation_scores(list(texts), list(split.labels))
    scores["lm_loss"] = lm_loss(tm, split.inputs, batch_size)
    scores["gen_tokens_per_s"] = spent["tokens"] / spent["seconds"] if spent["seconds"] else 0.0
    return scores, texts


def train_tagged_task(
    spec: TaskSpec,
    data: TaskData,
    model: str | TaggedModel,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    tags: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_conflict: str | dict = "error",
    source: TaskSource | None = None,
    span_cache=None,
) -> dict[str, Any]:
    """Train the task's function tag (and heads) and evaluate; returns metrics, parameter counts and time.
    `source` says where the task came from, for the run's config.yaml (None: only the spec's template and
    head are recorded, so `domainlm eval` has no data to reload). `span_cache`: a `SpanCache` of `model` to
    share between runs (a sweep over function-tag settings computes each span once)."""
    started = time.time()
    source = source or TaskSource(
        template=spec.template, head=spec.head, n_classes=spec.n_classes, char_level=spec.char_level_tags
    )
    run_config = RunConfig(
        model if isinstance(model, str) else model.name,
        config,
        task=source,
        tags=tags or [],
        prefer=on_conflict,
    )
    with RunDirectory(out_dir, resume=resume, overwrite=overwrite) as run:
        run.write_config(run_config.to_dict())
        for reason, count in data.skipped.items():
            run.log(f"skipped {count} rows: {reason}")
        tm = _tagged_model(model, config, tags, on_conflict)
        template = Template(spec.template)
        new_head = prepare_tags(tm, template, spec, data.train, config, classes=data.info.get("classes"))
        splits = {name: render_split(template, exs, spec.name) for name, exs in data.splits().items()}
        generative = spec.head == "generation"
        domain_tags = generation_domain_tags(template, data.train) if generative else template.domain_tags
        method = TagMethod(
            tm,
            config,
            splits["train"],
            function_tag=template.function_tag,
            domain_tags=domain_tags,
            cache=span_cache,
        )
        # Lengths are checked before anything runs the model (with or without span reuse), naming the row.
        where = {name: [ex.where for ex in exs] for name, exs in data.splits().items()}
        touched = overflow_report(tm, splits, method.isolate, source=data.info.get("source"), where=where)
        if any(touched.values()):
            run.log(f"over-long inputs ({config.overflow}): {touched}")
        head_start = {"head_init": "zero"}
        description = f"tags on {spec.name}"
        probe_start = (
            new_head and config.head_init != "zero" and not generative
        )  # a library's head keeps its own
        if probe_start:
            check_memory(method, config.loop(), run.log, description)  # before the read-out pass
            head_start = start_head(tm, method, template.function_tag, config)
            run.log(f"head start: {head_start}")

        def score(name: str, description: str) -> tuple[dict[str, float], np.ndarray]:
            return evaluate_split(
                tm,
                splits[name],
                spec,
                isolate=method.isolate,
                cache=method.cache,
                batch_size=config.eval_batch_size,
                description=description,
                decoding={"max_new_tokens": config.max_new_tokens, "num_beams": config.num_beams},
            )

        method.anchor_center()

        def validate() -> dict:
            if generative:  # the validation targets' loss: generating at every validation is slow
                return {"lm_loss": lm_loss(tm, splits["val"].inputs, config.eval_batch_size)}
            method.sync_center()
            return score("val", "validating")[0]

        trained = fit(
            method,
            config.loop(),
            validate=validate if len(splits["val"]) else None,
            select=spec.primary_metric,
            checkpoint=run.path / CHECKPOINT,
            resume=resume,
            log=run.log,
            description=description,
            memory_checked=probe_start,
        )
        method.sync_center()  # the kept (best) tags' centre
        history = trained.history
        results: dict[str, Any] = {
            "task": spec.name,
            "method": "tags",
            "seed": config.seed,
            "trainable_params": tm.num_trainable(),
            "total_params": tm.num_total(),
            "train_tokens_per_s": round(trained.tokens_per_s, 1),
            "best_step": trained.best_step,
            **{f"n_{name}": len(examples) for name, examples in data.splits().items()},
            "skipped": dict(data.skipped),
            "info": data.info,
            "isolate": method.isolate,
            "reuse": method.reuse,
            "head": {"readout": config.readout, "hidden": config.head_hidden, **head_start},
            "overflow": {"mode": config.overflow, "max_span_tokens": config.max_span_tokens, **touched},
        }
        if method.cache is not None:
            results["span_cache"] = {**vars(method.cache.stats), "bytes": method.cache.bytes}
        predictions = {}
        for name in ("val", "test"):
            if len(splits[name]) == 0:
                continue
            scores, preds = score(name, f"scoring {name}")
            results.update({f"{name}_{k}": v for k, v in scores.items()})
            predictions[name] = preds
            write_predictions(run.path / f"predictions_{name}.csv", splits[name], preds, spec)
        if method.cache is not None:
            method.cache.flush()  # spans still buffered for a disk store (--span-store)
        results["seconds"] = round(time.time() - started, 2)
        training = {"task": spec.name, "template": spec.template, **config.to_dict()}
        _save_tags_and_history(run, tm, None, training, results, history, f"{spec.name}: tags")
        if "test" in predictions and spec.head == "regression":
            plots.predicted_vs_true(
                splits["test"].labels,
                predictions["test"].reshape(-1),
                run.path / "scatter_test.png",
                title=f"{spec.name} test (tags)",
            )
        resolved = dataclasses.replace(run_config, isolate=results["isolate"], reuse=results["reuse"])
        run.write_config(resolved.to_dict())  # what eval and predict use
        run.write_metrics(results)
        run.log("metrics: " + ", ".join(f"{k}={v:.5g}" for k, v in results.items() if isinstance(v, float)))
        run.complete()
        results["predictions"] = predictions
        results["run_dir"] = str(run.path)
        return results


def overflow_report(
    tm: TaggedModel,
    splits: dict[str, Split],
    isolate: bool,
    *,
    source: str | None = None,
    where: dict[str, list[str]] | None = None,
) -> dict[str, int]:
    """How many inputs per split the length policy truncated or windowed (never silent); an input that
    still exceeds the model's positions is refused, named by `source` and its `where` (e.g. "line 5")."""
    out = {}
    for name, split in splits.items():
        names = (where or {}).get(name) or [f"{name} row {i + 1}" for i in range(len(split))]
        encoded = check_lengths(tm, split.inputs, isolate, source=source, where=names)
        out[f"{name}_truncated"] = sum(ex.truncated > 0 for ex in encoded)
        out[f"{name}_windowed"] = sum(ex.windows > 0 for ex in encoded)
    return out


def check_lengths(tm: TaggedModel, inputs: list, isolate: bool, *, source, where: list[str]) -> list:
    """The inputs encoded, each checked against the model's positions (`where[i]` names input i)."""
    encoded = []
    for i, (item, name) in enumerate(zip(inputs, where)):
        ex = tm.encoder.encode(item, i, isolate)
        check_fits(ex, isolate, tm.max_positions, source=source, item=name)
        encoded.append(ex)
    return encoded


def write_predictions(path: Path, split: Split, preds: np.ndarray, spec: TaskSpec) -> None:
    rows = zip(split.ids or range(len(split)), split.labels or [None] * len(split), preds)
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        if spec.head == "generation":
            w.writerow(["id", "reference", "prediction"])
            w.writerows(rows)
        elif spec.head == "regression":
            w.writerow(["id", "true", "prediction"])
            w.writerows([i, y, float(np.ravel(p)[0])] for i, y, p in rows)
        else:
            w.writerow(["id", "true", "prediction", *[f"p{k}" for k in range(preds.shape[1])]])
            w.writerows([i, y, int(np.argmax(p)), *map(float, p)] for i, y, p in rows)


def train_domain_tag(
    texts: list[str],
    tag: str,
    model: str | TaggedModel,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    char_level: bool = False,
    val_fraction: float = 0.05,
    tags: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    corpus: CorpusSource | None = None,
    skipped: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Stage 1: a domain tag from unlabelled text, next-token loss on "<Tag> text" (non-tag tokens only).
    `corpus` says where the texts came from, for the run's config.yaml; `skipped` counts the lines reading
    it left out, by reason (logged and in metrics.json)."""
    started = time.time()
    corpus = corpus or CorpusSource(tag=tag, char_level=char_level, val_fraction=val_fraction)
    run_config = RunConfig(
        model if isinstance(model, str) else model.name, config, corpus=corpus, tags=tags or []
    )
    with RunDirectory(out_dir, resume=resume, overwrite=overwrite) as run:
        run.write_config(run_config.to_dict())
        skipped = {k: v for k, v in (skipped or {}).items() if v}
        for reason, count in skipped.items():
            run.log(f"skipped {count} corpus lines: {reason}")
        tm = _tagged_model(model, config, tags)
        if tag not in tm.specs:
            tm.add_tag(
                tag,
                "domain",
                length=config.tag_length,
                char_level=char_level,
                init_text=config.tag_init_text.get(tag),
            )
        elif tm.specs[tag].kind != "domain":
            raise DomainLMError(f"<{tag}> is a {tm.specs[tag].kind} tag, not a domain tag")
        order = list(range(len(texts)))
        random.Random(config.seed).shuffle(order)
        n_val = max(1, int(len(texts) * val_fraction)) if len(texts) > 1 else 0

        def render(idx):
            return Split([domain_parts(tag, texts[i]) for i in idx], None, [str(i) for i in idx])

        train, val = render(order[n_val:]), render(order[:n_val])
        method = TagMethod(tm, config, train, function_tag=None, domain_tags=[tag])

        def validate() -> dict:
            return {"lm_loss": lm_loss(tm, val.inputs, config.eval_batch_size)}

        trained = fit(
            method,
            config.loop(),
            validate=validate if len(val) else None,
            select="lm_loss",
            checkpoint=run.path / CHECKPOINT,
            resume=resume,
            log=run.log,
            description="stage domain",
        )
        history = trained.history
        results = {
            "stage": "domain",
            "tag": tag,
            "trainable_params": tm.num_trainable(),
            "n_train": len(train),
            "n_val": len(val),
            "skipped": skipped,
            "train_tokens_per_s": round(trained.tokens_per_s, 1),
        }
        if len(val):
            results["val_lm_loss"] = lm_loss(tm, val.inputs, config.eval_batch_size)
        results["seconds"] = round(time.time() - started, 2)
        training = {"stage": "domain", **config.to_dict()}
        _save_tags_and_history(run, tm, [tag], training, results, history, f"<{tag}>: next-token loss")
        run.write_metrics(results)
        run.complete()
        results["run_dir"] = str(run.path)
        return results


def _tagged_model(model: str | TaggedModel, config: TrainConfig, tags, on_conflict="error") -> TaggedModel:
    """The model to train (loaded when named) with the tag libraries it starts from."""
    if not isinstance(model, TaggedModel):
        model = TaggedModel.from_pretrained(model, dtype=config.dtype, device=process_device(config.device))
    if tags:
        model.load_tags(*tags, on_conflict=on_conflict)
    return model


def _save_tags_and_history(run: RunDirectory, tm, names, training: dict, results: dict, history, title: str):
    """The trained tags (their library records the training settings and numeric results), the training
    history and its curve."""
    numbers = {k: v for k, v in results.items() if isinstance(v, (int, float))}
    tm.save_tags(run.path / "tags", names, training=training, metrics=numbers)
    io.write_json(run.path / "history.json", history)
    if history:
        plots.training_curve(history, run.path / "training_curve.png", title=title)


def domain_parts(tag: str, text: str) -> list[Part]:
    """Stage-1 input: `<Tag> text`, the text being the tag's data span."""
    return [Part("tag", tag), Part("text", " "), Part("data", text, domain=tag)]
