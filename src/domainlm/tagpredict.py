"""What `domainlm predict` does: a file of inputs to a CSV of predictions, with a finished run's tags (or
libraries, a model and a template given one by one)."""

from __future__ import annotations

import csv
from pathlib import Path

from domainlm import io
from domainlm.engine.encoding import check_fits
from domainlm.engine.inference import predict
from domainlm.engine.model import TaggedModel
from domainlm.engine.template import Template
from domainlm.errors import DomainLMError, InputError
from domainlm.runs import finished_run_config
from domainlm.tasks import get_task
from domainlm.tasks.table import RowProblem, check_row, read_records


def predict_file(
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
    """Predict every row of `input` and write them, beside the input columns, to the CSV `out`; returns
    {"n_predicted", "n_skipped"}. A run gives model, template, tags, the attention isolation it trained with
    and its preset's row checks; `tags` then add libraries, `model` and `template` replace the run's.
    Every row is checked as training checks it; an invalid one stops the run naming its line, or with
    `skip_invalid` is written with an empty prediction and its `reason`, and counted in "n_skipped"."""
    isolate, source, train = False, None, None
    if run is not None:
        config = finished_run_config(run)
        source, train = config.task, config.train
        model = model or config.model
        template = template or (source.template_text() if source else None)
        tags = [str(Path(run) / "tags"), *(tags or [])]
        isolate = bool(config.isolate)
    if not (model and template and tags):
        raise DomainLMError("predict needs --run, or all of --model, --template and --tags")
    tmpl = Template(template)
    columns, records = read_records(Path(input))
    if not records:
        raise InputError("the file holds no data rows", source=str(input))
    # A preset's predict-time hook (e.g. synergy: SMILES from drug names, known cell lines), if any.
    prepare = get_task(source.preset).prepare_rows if source is not None and source.preset else None
    if prepare is not None:
        rows = prepare([r.values for r in records], source.data_dir, str(input), [r.line for r in records])
        for rec, values in zip(records, rows):
            rec.values = values
        columns = list(dict.fromkeys([*columns, *records[0].values]))
    tmpl.check_columns(columns, source=str(input))
    tm = TaggedModel.from_pretrained(model, device=device)
    if train is not None:  # over-long inputs as the run's training treated them
        tm.set_length_policy(train.overflow, train.max_span_tokens)
    tm.load_tags(*tags)
    for name in tmpl.markers:
        if name not in tm.specs:
            raise InputError(
                f"template uses <{name}>, which the tag libraries do not hold: {sorted(tm.specs)}"
            )
    head = tm.specs[tmpl.function_tag].head
    if head is None:
        raise InputError(
            f"<{tmpl.function_tag}> has no head: it generates text; use `domainlm translate` (or "
            "TaggedModel.generate)"
        )
    inputs, reasons = [], {}  # reasons: record index -> why it was not predicted (--skip-invalid)
    for k, rec in enumerate(records):
        try:
            inputs.append(checked_input(tm, tmpl, rec, isolate, str(input)))
        except InputError as e:
            if not skip_invalid:
                hint = "pass --skip-invalid to write such rows with an empty prediction and the reason"
                raise InputError(f"{e.reason} ({hint})", source=e.source, item=e.item) from None
            reasons[k] = e.reason
    kept = [rec for k, rec in enumerate(records) if k not in reasons]
    preds = predict(tm, inputs, isolate=isolate, batch_size=batch_size)
    regression = head.type == "regression"
    probabilities = [] if regression else [f"p_{c}" for c in (head.classes or range(head.n_classes))]
    predicted = iter(preds)
    with io.atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*columns, "prediction", *probabilities, *(["reason"] if skip_invalid else [])])
        for k, rec in enumerate(records):
            row = [rec.values.get(c, "") for c in columns]
            if k in reasons:  # written, so the output lines up with the input, with why it has no value
                w.writerow([*row, "", *[""] * len(probabilities), reasons[k]])
                continue
            p = next(predicted)
            if regression:
                values = [float(p.reshape(-1)[0])]
            else:
                k_best = int(p.argmax())
                values = [head.classes[k_best] if head.classes else k_best, *map(float, p)]
            w.writerow([*row, *values, *([""] if skip_invalid else [])])
    return {"n_predicted": len(kept), "n_skipped": len(reasons)}


def checked_input(tm: TaggedModel, template: Template, record, isolate: bool, source: str):
    """A row rendered for the model after the checks training makes (fields given, valid SMILES and
    protein spans, a length the model takes); an InputError names the file and line."""
    where = f"line {record.line}"
    try:
        check_row(template, record.values)
    except RowProblem as problem:
        raise InputError(str(problem), source=source, item=where) from None
    rendered = template.render(record.values, source=source, item=where)
    check_fits(tm.encoder.encode(rendered, 0, isolate), isolate, tm.max_positions, source=source, item=where)
    return rendered
