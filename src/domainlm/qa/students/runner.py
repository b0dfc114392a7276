"""Fine-tune a student into a run directory and evaluate it; the functions behind `domainlm finetune` and
`domainlm evaluate-qa`."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import yaml

from domainlm import io, plots
from domainlm.backbone import resolve
from domainlm.errors import DomainLMError, InputError
from domainlm.qa.data import QASplits, load_pubmedqa, load_qa_dir, pubmedqa_files
from domainlm.qa.students.config import Decoding, StudentConfig
from domainlm.qa.students.evaluation import majority_baseline, score, write_report
from domainlm.qa.students.student import get_method
from domainlm.qa.students.trainable import train_student
from domainlm.runs import RunDirectory
from domainlm.training import CHECKPOINT

EVAL_SPLITS = ("dev", "test")


def load_data(data: str, split: str = "official", fold: int = 0, limit: int | None = None) -> QASplits:
    """A directory with train/dev/test.jsonl, or the PubMedQA data directory (split and fold apply)."""
    path = Path(data or os.environ.get("DOMAINLM_DATA", ""))
    if not str(path) or not path.is_dir():
        raise InputError("data directory not found (pass --data or set DOMAINLM_DATA)", source=str(path))
    if (path / "train.jsonl").exists():
        splits = load_qa_dir(path)
    else:
        pubmedqa_files(path)  # a clear error when neither layout is there
        splits = load_pubmedqa(path, split=split, fold=fold)
    if limit:
        splits = QASplits(*(items[:limit] for items in (splits.train, splits.dev, splits.test)))
    return splits


def augmentation_of(items) -> str:
    """Which augmentation the training set carries, read from its items' sources."""
    sources = {item.source for item in items} - {"original"}
    if not sources:
        return "none"
    return "combined" if sources == {"rewrite", "new"} else sources.pop()


def describe_data(config: StudentConfig, splits: QASplits) -> dict:
    """What the run trained on, for comparison tables: PubMedQA split and fold, augmentation and teacher. A QA
    directory says so in split.json (`data export`) or manifest.json (`augment`)."""
    path = Path(config.data)
    fold = config.fold if config.split == "official" else None
    info = {"split": config.split, "fold": fold, "teacher": None}
    if (path / "train.jsonl").exists():
        manifest = _read_json(path / "manifest.json")
        split = _read_json(path / "split.json") or manifest.get("data", {})
        if isinstance(split.get("split"), dict):  # augment copies the exported split.json under "split"
            split = split["split"]
        info = {"split": split.get("split"), "fold": split.get("fold"), "teacher": manifest.get("model")}
    return {**info, "augmentation": augmentation_of(splits.train)}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def finetune(
    config: StudentConfig | None,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    decoding: Decoding | None = None,
) -> dict:
    """Train a student and evaluate it on dev and test; returns the metrics report. With `resume` the run's
    saved config is used and training continues from its last checkpoint. The weights kept are those at
    the lowest dev loss (`training.best_step`)."""
    out = Path(out)
    if resume and (out / "config.yaml").is_file():
        config = StudentConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    elif config is None:
        raise DomainLMError(f"nothing to resume in {out} (no config.yaml)")
    data = load_data(config.data, config.split, config.fold, config.limit)
    decoding = decoding or Decoding()
    # Built before the run folder exists, so a bad model name leaves no failed run behind.
    student = get_method(config.method).build(config)
    with RunDirectory(out, resume=resume, overwrite=overwrite) as run:
        encoded = {
            split: [student.encode(item, train=True) for item in items]
            for split, items in data.as_dict().items()
        }
        truncated = {split: sum(e.truncated for e in rows) for split, rows in encoded.items()}
        weights = student.weigh_classes([item.label for item in data.train])  # None: unweighted
        counts = student.parameter_counts()
        run.write_config(
            {
                **config.to_dict(),
                "resolved": {
                    "model_path": resolve(config.model),
                    "kind": student.kind,
                    "parameters": counts,
                    "data": describe_data(config, data),
                    "truncated_contexts": truncated,
                    **({"class_weights": weights} if weights else {}),
                    "sizes": {split: len(items) for split, items in data.as_dict().items()},
                    "train_sources": dict(Counter(item.source for item in data.train)),
                },
            }
        )
        run.log(
            f"{config.method} on {config.model}: {counts['trainable']:,} trainable of {counts['total']:,} "
            f"parameters; contexts cut to fit: {truncated}"
        )
        trained = train_student(
            student,
            [e.features for e in encoded["train"]],
            [e.features for e in encoded["dev"]],
            config,
            checkpoint=run.path / CHECKPOINT,
            resume=resume,
            log=run.log,
        )
        student.save(run.path)
        io.write_json(run.path / "history.json", trained.history)
        plots.training_curve(
            trained.history, run.path / "training_curve.png", title=f"{config.method} {config.model}"
        )
        report, predictions = evaluate(student, data, decoding)
        report["training"] = {
            "steps": trained.steps,
            "epochs": trained.epochs,
            "parameters": counts,
            "final_train_loss": trained.history[-1]["train_loss"],
            "final_dev_loss": trained.history[-1].get("val_loss"),
            "best_step": trained.best_step,
            "best_dev_loss": trained.best_value,
            "skipped_batches": trained.skipped_batches,
            "truncated_contexts": truncated,
        }
        write_report(run.path, report, predictions, _title(config))  # metrics.json, metrics.md, plots
        (run.path / CHECKPOINT).unlink(missing_ok=True)  # the run is complete: nothing to resume
        run.log(_summary(report))
        run.complete()
    return report


def evaluate(student, data: QASplits, decoding: Decoding | None, splits=EVAL_SPLITS) -> tuple[dict, dict]:
    """(report, predictions by split) for `splits`, with the majority-class baseline beside each."""
    predictions = {split: student.predict(getattr(data, split), decoding) for split in splits}
    report = {
        "method": student.config.method,
        "model": student.config.model,
        "decoding": decoding.name if student.kind == "generative" and decoding else None,
        # parse: labels read from generated text (parse failures counted); likelihood: never fails
        "answer_scoring": (decoding or Decoding()).answer_scoring if student.kind == "generative" else None,
        "splits": {split: score(p) for split, p in predictions.items()},
        "majority": {split: majority_baseline(data.train, getattr(data, split)) for split in splits},
    }
    return report, predictions


def evaluate_run(
    run_dir: str | Path,
    *,
    splits=EVAL_SPLITS,
    decoding: Decoding | None = None,
    out: str | Path | None = None,
) -> dict:
    """Re-evaluate a finished run (e.g. with other decoding); writes into `out` (default
    RUN/eval-<decoding>)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise InputError("not a student run directory (no config.yaml)", source=str(run_dir))
    config = StudentConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    decoding = decoding or Decoding()
    student = get_method(config.method).build(config)
    student.load_weights(run_dir)
    data = load_data(config.data, config.split, config.fold, config.limit)
    report, predictions = evaluate(student, data, decoding, splits)
    name = decoding.name if student.kind == "generative" else "classifier"
    write_report(Path(out) if out else run_dir / f"eval-{name}", report, predictions, _title(config))
    return report


def _title(config: StudentConfig) -> str:
    return f"{config.method} student on {config.model}"


def _summary(report: dict) -> str:
    return "; ".join(
        f"{split}: accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}, "
        f"parse failures {r['parse_failures']}"
        for split, r in report["splits"].items()
    )
