"""What the tag commands do, kept apart from argument parsing so it can be called from Python too."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from domainlm.errors import DomainLMError, InputError

METRICS_BY_HEAD = {
    "regression": ("mse", "mae", "pearson", "spearman"),
    "classification": ("accuracy", "macro_f1"),
}


def train_config(opts: dict[str, Any]):
    from domainlm.training import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in opts.items() if k in known})


def resolve_task(opts: dict[str, Any]):
    """A (TaskSpec, TaskData) from a preset name or from a user file + template."""
    from domainlm.tasks import TaskSpec, get_task

    if opts.get("task") and opts.get("data"):
        raise DomainLMError("give either --task (a preset) or --data (your own file), not both")
    loader_opts = dict(opts.get("task_options") or {})
    for key in ("limit_train", "limit_eval"):
        if opts.get(key) is not None:
            loader_opts[key] = opts[key]
    if opts.get("skip_invalid"):
        loader_opts["skip_invalid"] = True
    if opts.get("task"):
        spec = get_task(opts["task"])
        if opts.get("template"):
            spec = _replace(spec, template=opts["template"])
        if not opts.get("data_dir"):
            raise DomainLMError("preset tasks read their data from --data-dir (or $DOMAINLM_DATA)")
        return spec, spec.load(Path(opts["data_dir"]), **loader_opts)
    if not opts.get("data"):
        raise DomainLMError(
            "say what to train on: --task PRESET, or --data FILE with --template and --label-column"
        )
    for key in ("template", "label_column"):
        if not opts.get(key):
            raise DomainLMError(f"a user task needs --{key.replace('_', '-')}")
    from domainlm.tasks.table import load_table_task

    head = opts.get("head") or "regression"
    data = load_table_task(
        opts["data"],
        opts["template"],
        opts["label_column"],
        head=head,
        n_classes=opts.get("n_classes"),
        id_column=opts.get("id_column"),
        split_column=opts.get("split_column"),
        seed=opts.get("seed", 0),
        skip_invalid=bool(opts.get("skip_invalid")),
    )
    for key in ("limit_train", "limit_eval"):
        if opts.get(key) is not None:
            n = opts[key]
            data.train = data.train[:n] if key == "limit_train" else data.train
            if key == "limit_eval":
                data.val, data.test = data.val[:n], data.test[:n]
    n_classes = len(data.info.get("classes", [])) or opts.get("n_classes")
    spec = TaskSpec(
        Path(opts["data"]).stem,
        opts["template"],
        head=head,
        n_classes=n_classes,
        metrics=METRICS_BY_HEAD[head],
        primary_metric="mse" if head == "regression" else "accuracy",
        char_level_tags=tuple(opts.get("char_level") or ()),
    )
    return spec, data


def _replace(spec, **changes):
    import dataclasses

    return dataclasses.replace(spec, **changes)


def run_training(opts: dict[str, Any], *, resume: bool = False, overwrite: bool = False) -> dict:
    from domainlm.tagruns import train_domain_tag, train_tagged_task

    config = train_config(opts)
    on_conflict = _prefer(opts.get("prefer"))
    record = {"resolved_options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()}}
    if config.stage == "domain":
        from domainlm.corpus import read_corpus

        if not opts.get("corpus") or not opts.get("tag"):
            raise DomainLMError(
                "stage domain needs --corpus (unlabelled text) and --tag (the domain tag name)"
            )
        texts = read_corpus(opts["corpus"], opts.get("text_column"))
        if opts.get("limit_train"):
            texts = texts[: opts["limit_train"]]
        char_level = opts["tag"] in (opts.get("char_level") or [])
        return train_domain_tag(
            texts,
            opts["tag"],
            opts["model"],
            opts["out"],
            config,
            char_level=char_level,
            val_fraction=opts.get("val_fraction", 0.05),
            tags=opts.get("tags"),
            resume=resume,
            overwrite=overwrite,
            extra_config=record,
        )
    spec, data = resolve_task(opts)
    result = train_tagged_task(
        spec,
        data,
        opts["model"],
        opts["out"],
        config,
        tags=opts.get("tags"),
        resume=resume,
        overwrite=overwrite,
        on_conflict=on_conflict,
        extra_config=record,
    )
    result.pop("predictions", None)
    return result


def _prefer(items) -> str | dict:
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


def _load_run(run: Path) -> dict:
    cfg_path = Path(run) / "config.yaml"
    if not cfg_path.exists():
        raise DomainLMError(f"{run} is not a run directory (no config.yaml)")
    status = (
        json.loads((Path(run) / "status.json").read_text()).get("status")
        if (Path(run) / "status.json").exists()
        else None
    )
    if status != "complete":
        raise DomainLMError(
            f"{run} did not finish (status: {status}); resume it with `domainlm train --resume`"
        )
    return yaml.safe_load(cfg_path.read_text())


def run_eval(run: Path, *, split: str = "test", data_dir=None, data=None, device=None) -> dict:
    from domainlm import io
    from domainlm.engine.model import TaggedModel
    from domainlm.engine.template import Template
    from domainlm.tagruns import evaluate_split, render_split

    cfg = _load_run(run)
    opts = dict(cfg.get("resolved_options", {}))
    if data_dir:
        opts["data_dir"] = data_dir
    if data:
        opts.update({"data": data, "split_column": None})
    spec, task_data = resolve_task(opts)
    if split not in task_data.splits():
        raise DomainLMError(f"split must be one of {list(task_data.splits())}")
    tm = TaggedModel.from_pretrained(opts["model"], dtype=opts.get("dtype", "float32"), device=device)
    tm.load_tags(Path(run) / "tags")
    examples = task_data.splits()[split] if not data else task_data.train + task_data.val + task_data.test
    rendered = render_split(Template(spec.template), examples, str(data or spec.name))
    isolate = json.loads((Path(run) / "metrics.json").read_text()).get("isolate", False)
    scores, _ = evaluate_split(tm, rendered, spec, isolate=isolate, description=f"scoring {split}")
    scores = {k: v for k, v in scores.items() if not k.startswith("selection")}
    scores["n"] = len(examples)
    io.write_json(Path(run) / f"eval_{'file' if data else split}.json", scores)
    return scores


def run_predict(
    input: Path,
    out: Path,
    *,
    run=None,
    tags=None,
    model=None,
    template=None,
    skip_invalid=False,
    batch_size=32,
    device=None,
) -> dict:
    import csv

    from domainlm import io
    from domainlm.engine.model import TaggedModel
    from domainlm.engine.template import Template
    from domainlm.tasks.table import read_records
    from domainlm.training import predict

    isolate = False
    if run is not None:
        cfg = _load_run(run)
        opts = cfg.get("resolved_options", {})
        model = model or opts.get("model") or cfg.get("model")
        template = template or cfg.get("template")
        tags = [str(Path(run) / "tags")] + list(tags or [])
        isolate = json.loads((Path(run) / "metrics.json").read_text()).get("isolate", False)
    if not (model and template and tags):
        raise DomainLMError("predict needs --run, or all of --model, --template and --tags")
    tmpl = Template(template)
    columns, records = read_records(Path(input))
    if not records:
        raise InputError("the file holds no data rows", source=str(input))
    prepare = _row_preparer(run)
    if prepare is not None:
        rows = prepare([r.values for r in records], str(input), [r.line for r in records])
        for rec, values in zip(records, rows):
            rec.values = values
        columns = list(dict.fromkeys([*columns, *records[0].values]))
    tmpl.check_columns(columns, source=str(input))
    tm = TaggedModel.from_pretrained(model, device=device)
    tm.load_tags(*tags)
    for name in tmpl.markers:
        if name not in tm.specs:
            raise InputError(
                f"template uses <{name}>, which the tag libraries do not hold: {sorted(tm.specs)}"
            )
    head = tm.specs[tmpl.function_tag].head
    if head is None:
        raise InputError(f"<{tmpl.function_tag}> has no head, so there is nothing to predict")
    inputs, kept, skipped = [], [], 0
    for rec in records:
        try:
            inputs.append(tmpl.render(rec.values, source=str(input), item=f"line {rec.line}"))
            kept.append(rec)
        except InputError:
            if not skip_invalid:
                raise
            skipped += 1
    preds = predict(tm, inputs, isolate=isolate, batch_size=batch_size)
    with io.atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        extra = (
            ["prediction"]
            if head.type == "regression"
            else ["prediction", *[f"p_{c}" for c in (head.classes or range(head.n_classes))]]
        )
        w.writerow([*columns, *extra])
        for rec, p in zip(kept, preds):
            row = [rec.values.get(c, "") for c in columns]
            if head.type == "regression":
                w.writerow([*row, float(p.reshape(-1)[0])])
            else:
                k = int(p.argmax())
                w.writerow([*row, head.classes[k] if head.classes else k, *map(float, p)])
    return {"n_predicted": len(kept), "n_skipped": skipped}


def _row_preparer(run):
    """A preset's predict-time hook (e.g. synergy: SMILES from drug names, known cell lines), if any."""
    if run is None:
        return None
    opts = _load_run(run).get("resolved_options", {})
    if not opts.get("task"):
        return None
    from domainlm.tasks import get_task

    spec = get_task(opts["task"])
    if spec.prepare_rows is None:
        return None
    return lambda rows, source, lines: spec.prepare_rows(rows, opts.get("data_dir"), source, lines)


def run_demo(data_dir, out, *, limit_train: int, limit_eval: int, epochs: float) -> dict:
    """QED on the packaged MiniLM: domain and function tags trained jointly (an encoder has no LM head)."""
    import numpy as np

    from domainlm import metrics
    from domainlm.tagruns import train_tagged_task
    from domainlm.tasks import get_task
    from domainlm.training import TrainConfig

    spec = get_task("qed")
    data = spec.load(Path(data_dir), limit_train=limit_train, limit_eval=limit_eval)
    config = TrainConfig(
        epochs=epochs,
        lr=2e-3,
        batch_size=16,
        grad_accum=1,
        train_domain_tags=True,
        eval_batch_size=64,
        evals_per_epoch=1,
        overflow="truncate",  # a few ligands exceed MiniLM's 512 positions; counted in metrics.json
    )
    result = train_tagged_task(
        spec,
        data,
        "minilm",
        out,
        config,
        overwrite=True,
        extra_config={"demo": True, "data_dir": str(data_dir)},
    )
    labels = np.array([ex.label for ex in data.test])
    result["test_mse_mean_predictor"] = metrics.mse(
        labels, np.full_like(labels, np.mean([ex.label for ex in data.train]))
    )
    result.pop("predictions", None)
    return result
