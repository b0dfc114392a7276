"""What `domainlm predict` does: a file of inputs to a CSV of predictions, with a finished run's tags (or
libraries, a model and a template given one by one)."""

from __future__ import annotations

import csv
from pathlib import Path

from domainlm import io
from domainlm.engine.inference import predict
from domainlm.engine.model import TaggedModel
from domainlm.engine.template import Template
from domainlm.errors import DomainLMError, InputError
from domainlm.runs import finished_run_config
from domainlm.tasks import get_task
from domainlm.tasks.table import read_records


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
    and its preset's row checks; `tags` then add libraries, `model` and `template` replace the run's."""
    isolate, source = False, None
    if run is not None:
        config = finished_run_config(run)
        source = config.task
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
    regression = head.type == "regression"
    probabilities = [] if regression else [f"p_{c}" for c in (head.classes or range(head.n_classes))]
    with io.atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*columns, "prediction", *probabilities])
        for rec, p in zip(kept, preds):
            row = [rec.values.get(c, "") for c in columns]
            if regression:
                w.writerow([*row, float(p.reshape(-1)[0])])
            else:
                k = int(p.argmax())
                w.writerow([*row, head.classes[k] if head.classes else k, *map(float, p)])
    return {"n_predicted": len(kept), "n_skipped": skipped}
