"""`domainlm bench`: every method on the same split and seed, one table per task.

Methods: the classical baselines (`domainlm.baselines.classical`, on fixed features), the peft baselines on
the frozen backbone (`domainlm.baselines.peft_heads`) and learned tags (`domainlm.tagruns`). Each finished
(method, fold) row is written atomically to `<out>/<task>/rows/` as soon as it exists, and the table
`<out>/<task>.md` / `<task>.json` is rebuilt from those rows; `resume=True` skips rows already there (after
checking they were made with the same settings), so a killed benchmark loses at most the method it was on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm import distributed, io, plots
from domainlm.errors import DomainLMError
from domainlm.interrupts import TrainingInterrupted
from domainlm.metrics import is_better
from domainlm.runs import RunDirectory
from domainlm.tasks.resolve import TaskSource, resolve_task

CLASSICAL_METHODS = ("mean", "nearest_neighbour", "random_forest", "gradient_boosting")
PEFT_METHODS = ("linear_probe", "prompt_tuning", "lora")
TAG_METHOD = "tags"
CHECKPOINT = "checkpoint.pt"  # a peft baseline's training state while it runs (`training.fit`'s)
ALL_METHODS = (*CLASSICAL_METHODS, *PEFT_METHODS, TAG_METHOD)
# Settings only the tag row reads: other rows neither record nor compare them.
TAG_ONLY_SETTINGS = {"tag_options", "tags", "train_domain_tags", "isolate", "cache_dtype"}
PER_BENCH_KEYS = {"settings", "published_anchors"}  # the same in every row: the table states them once


def anchor_text(name: str, metrics: dict[str, float]) -> str:
    return f"{name}: " + ", ".join(f"test_{k} {v}" for k, v in metrics.items())


@dataclass
class BenchSettings:
    """Everything that makes two rows comparable; rows made under other settings are never mixed."""

    task: str
    model: str = "minilm"
    data_dir: str | None = None
    methods: tuple[str, ...] = ALL_METHODS
    limit_train: int | None = None
    limit_eval: int | None = None
    epochs: float | None = None  # None: the task's default (paper: QED 2, Descriptor 4)
    seed: int = 0
    lr: float | None = None  # None: tags 1e-4 (paper), peft methods their documented DEFAULT_LR
    batch_size: int = 4
    grad_accum: int = 8
    skip_invalid: bool = False
    task_options: dict[str, Any] = field(default_factory=dict)
    # Classical methods: after selection on the validation split, fit again on train + val for the test row
    # (DeepDTA's setting 1 trains its final model on all five training folds).
    refit_train_val: bool = False
    tags: list[str] = field(default_factory=list)  # stage-1 tag libraries for the tag method
    train_domain_tags: bool | None = None  # None: train them jointly unless libraries are given
    folds: list[str] | None = None  # a subset of the task's folds
    # Inputs longer than the model's positions: the tag method's overflow policy, by default `train`'s (error:
    # refused before any step, naming the item); the peft baselines always cut the data span's end (both
    # counted in the rows).
    overflow: str = "error"
    max_span_tokens: int | None = None  # tag method: longest data span kept whole (truncate / window)
    # Tag method engine: isolated spans (None: the task's default) and reuse of span keys/values
    # (None: whenever isolated spans are frozen), bounded by a memory budget and optionally stored in 16 bits.
    isolate: bool | None = None
    reuse: bool | None = None
    cache_budget_gb: float | None = None
    cache_dtype: str | None = None
    span_store: str | None = None  # keys/values on disk too (speed only: never compared)
    dtype: str = "float32"
    device: str | None = None
    # The tag method's own training settings over the shared ones (any `TrainConfig` field: lr, epochs,
    # batch_size, head_init, readout, head_hidden, tag_length, ...); no other method depends on them.
    tag_options: dict[str, Any] | None = None

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown or not self.methods:
            raise DomainLMError(f"unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)}")
        for name in ("limit_train", "limit_eval"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DomainLMError(f"{name} must be >= 1")

        if self.tag_options:
            from domainlm.training import TrainConfig

            known = {f.name for f in dataclasses.fields(TrainConfig)}
            unknown = sorted(set(self.tag_options) - known)
            if unknown:
                raise DomainLMError(f"unknown tag option(s) {unknown}; any of: {', '.join(sorted(known))}")

    def comparable(self, method: str | None = None) -> dict[str, Any]:
        """The settings a row of `method` records and a resumed run must match (not which methods or folds
        run); None: the bench's, every method's settings."""
        # reuse and the cache budget change speed, never results (reuse is exact: tests/test_reuse.py)
        skip = {"methods", "folds", "data_dir", "device", "reuse", "cache_budget_gb", "span_store"}
        if method is not None and method != TAG_METHOD:
            skip |= TAG_ONLY_SETTINGS
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


class Bench:
    def __init__(
        self,
        settings: BenchSettings,
        out: str | Path,
        *,
        log: Callable[[str], None] = print,
        command: str | None = None,
    ):
        """`command`: the command line that runs this bench, recorded in each row it makes."""
        from domainlm.tasks import get_task

        self.settings = settings
        self.spec = get_task(settings.task)
        self.out = Path(out)
        self.dir = self.out / settings.task
        self.rows_dir = self.dir / "rows"
        self._print = log
        self.command = command
        self._features = None

    # ---- bookkeeping -----------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if not distributed.is_main_process():  # under several processes only the main one reports and writes
            return
        self._print(message)
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "bench.log", "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def folds(self) -> list[tuple[str, dict]]:
        plan = list(self.spec.folds)
        if self.settings.folds:
            unknown = sorted(set(self.settings.folds) - {name for name, _ in plan})
            if unknown:
                raise DomainLMError(f"unknown fold(s) {unknown}; {self.spec.name} has {[n for n, _ in plan]}")
            plan = [(n, o) for n, o in plan if n in self.settings.folds]
        return plan

    def existing_rows(self) -> dict[tuple[str, str], dict]:
        rows = {}
        for path in sorted(self.rows_dir.glob("*.json")) if self.rows_dir.exists() else []:
            row = json.loads(path.read_text(encoding="utf-8"))
            rows[(row["method"], row["fold"])] = row
        return rows

    def prepare(self, resume: bool, overwrite: bool) -> dict[tuple[str, str], dict]:
        rows = self.existing_rows()
        if overwrite:  # rows, run folders, plots and the tables of the earlier bench all go
            shutil.rmtree(self.dir, ignore_errors=True)
            for suffix in (".md", ".json"):
                (self.out / f"{self.spec.name}{suffix}").unlink(missing_ok=True)
            return {}
        if rows and not resume:
            raise DomainLMError(
                f"{self.dir} holds {len(rows)} finished row(s) of an earlier bench; pass --resume to keep "
                "them and run the rest, or --overwrite to start again"
            )
        for row in rows.values():
            want = _jsonable(self.settings.comparable(row["method"]))
            tag_row = row["method"] == TAG_METHOD
            had = {k: v for k, v in row["settings"].items() if tag_row or k not in TAG_ONLY_SETTINGS}
            differ = [
                f"{k}: {had.get(k)!r} -> {want.get(k)!r}"
                for k in sorted(set(want) | set(had))
                if want.get(k) != had.get(k)
            ]
            if differ:
                raise DomainLMError(
                    f"{self.rows_dir}: row {row['method']}/{row['fold']} was made with other settings "
                    f"({'; '.join(differ)}); pass --overwrite to start again"
                )
        return rows

    def save_row(self, row: dict) -> None:
        if not distributed.is_main_process():
            return
        io.write_json(self.rows_dir / f"{row['method']}__{row['fold']}.json", row)
        self.write_tables()

    # ---- the run ---------------------------------------------------------------------------------------
    def run(self, *, resume: bool = False, overwrite: bool = False) -> list[dict]:
        done = self.prepare(resume, overwrite)
        s, failed = self.settings, []
        for fold, _ in self.folds():
            todo = [m for m in ALL_METHODS if m in s.methods and (m, fold) not in done]
            if not todo:
                self.log(f"{s.task}/{fold}: every method already finished")
                continue
            data = self.load(fold)
            self._features = None  # classical features: computed once per fold, on first use
            self.log(
                f"{s.task}/{fold}: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test"
                + (f"; skipped {dict(data.skipped)}" if data.skipped else "")
            )
            for method in todo:
                self.log(f"{s.task}/{fold}: {method} ...")
                try:
                    self.run_one(method, fold, data)
                except TrainingInterrupted:
                    self.write_tables()  # Ctrl-C / SIGTERM stops the bench, not just the method under way
                    raise
                except (DomainLMError, RuntimeError, ValueError) as e:
                    # One method's failure must not cost the others' hours; it is reported at the end.
                    failed.append(f"{method}/{fold}: {e}")
                    self.log(f"{s.task}/{fold}: {method} FAILED: {e}")
        self.write_tables()
        if failed:
            raise DomainLMError(
                f"{len(failed)} method(s) failed (the others' rows are saved): " + "; ".join(failed)
            )
        return self.rows()

    def run_dir(self, method: str, fold: str) -> Path:
        """A trained method's folder: its history and curve, and while it trains its checkpoint."""
        return self.dir / "runs" / f"{method}__{fold}"

    def run_one(self, method: str, fold: str, data) -> dict:
        started = time.perf_counter()
        result = self.run_method(method, fold, data)
        row = self.make_row(method, fold, data, result, time.perf_counter() - started)
        if not distributed.is_main_process():
            return row
        self.plot(row, result)
        if result.get("history"):  # peft methods; the tag method writes its own run folder
            run_dir = self.run_dir(method, fold)
            io.write_json(run_dir / "history.json", result["history"])
            plots.training_curve(
                result["history"], run_dir / "training_curve.png", title=f"{self.spec.name}: {method}"
            )
        self.save_row(row)
        # the row is the result now; a peft baseline's training state is not needed any more
        (self.run_dir(method, fold) / CHECKPOINT).unlink(missing_ok=True)
        primary = f"test_{self.spec.primary_metric}"
        self.log(f"{self.spec.name}/{fold}: {method} {primary}={row.get(primary)} in {row['seconds']:.0f} s")
        return row

    def task_source(self, fold: str) -> TaskSource:
        s = self.settings
        return TaskSource(
            preset=s.task,
            data_dir=s.data_dir,
            task_options={**s.task_options, **dict(self.spec.folds)[fold]},
            limit_train=s.limit_train,
            limit_eval=s.limit_eval,
            skip_invalid=s.skip_invalid,
        )

    def load(self, fold: str):
        return resolve_task(self.task_source(fold))[1]

    def train_config(self, method: str):
        from domainlm.baselines.peft_heads import method_lr
        from domainlm.training import TrainConfig

        s = self.settings
        joint = s.train_domain_tags if s.train_domain_tags is not None else not s.tags
        config = TrainConfig(
            epochs=s.epochs or self.spec.defaults.get("epochs", 2.0),
            lr=method_lr(method, s.lr, self.spec.defaults.get("lr", 1e-4)),
            batch_size=s.batch_size,
            grad_accum=s.grad_accum,
            seed=s.seed,
            train_domain_tags=joint,
            overflow=s.overflow,
            max_span_tokens=s.max_span_tokens,
            isolate=s.isolate,
            reuse=s.reuse,
            cache_budget_gb=s.cache_budget_gb,
            cache_dtype=s.cache_dtype,
            span_store=s.span_store,
            dtype=s.dtype,
            device=s.device,
        )
        if method == TAG_METHOD and s.tag_options:
            config = dataclasses.replace(config, **s.tag_options)
        return config

    def run_method(self, method: str, fold: str, data) -> dict:
        if method in CLASSICAL_METHODS:
            return self.run_classical(method, data)
        config = self.train_config(method)
        if method in PEFT_METHODS:
            from domainlm.baselines.peft_heads import PeftSettings, train_peft_baseline
            from domainlm.engine.template import Template

            n_tags = len(Template(self.spec.template).domain_tags) + 1
            cut = self.settings.max_span_tokens if self.settings.overflow == "truncate" else None
            peft = PeftSettings(num_virtual_tokens=n_tags * config.tag_length, max_span_chars=cut)
            # A killed bench continues a half-trained baseline from its last checkpoint (the row is checked
            # against the bench's settings, the checkpoint against the loop's).
            trained = method != "linear_probe"  # the probe is a closed-form fit: nothing to checkpoint
            checkpoint = self.run_dir(method, fold) / CHECKPOINT if trained else None
            return train_peft_baseline(
                method,
                self.spec,
                data,
                self.settings.model,
                config,
                peft,
                log_fn=self.log,
                checkpoint=checkpoint,
                resume=checkpoint is not None and checkpoint.exists(),
            )
        return self.run_tags(fold, data, config)

    def run_classical(self, method: str, data) -> dict:
        from domainlm.baselines.classical import featurize_task, run_baseline

        if self.spec.head != "regression":
            raise DomainLMError(
                f"the classical baselines are regressors; {self.spec.name} is {self.spec.head}"
            )
        if self._features is None:
            started = time.perf_counter()
            self._features = featurize_task(data, self.spec)
            self._features_seconds = time.perf_counter() - started
        s = self.settings
        row, predictions = run_baseline(
            method, self._features, self.spec.metrics, seed=s.seed, refit=s.refit_train_val
        )
        metrics = {k: v for k, v in row.items() if k.startswith(("val_", "test_"))}
        return {
            "metrics": metrics,
            "trainable_params": row["trainable_params"],
            "predictions": {"y_true": self._features.y["test"], "y_pred": predictions.get("test")},
            "features_seconds": round(self._features_seconds, 2),
            "refit": row["refit"],
            "n_fit": row["n_fit"],
        }

    def run_tags(self, fold: str, data, config) -> dict:
        from domainlm.tagruns import train_tagged_task

        run_dir = self.run_dir(TAG_METHOD, fold)
        # Resume an interrupted tag run from its checkpoint; redo one that finished without its row saved.
        finished = RunDirectory.read_status(run_dir) == "complete"
        result = train_tagged_task(
            self.spec,
            data,
            self.settings.model,
            run_dir,
            config,
            tags=self.settings.tags or None,
            resume=run_dir.exists() and not finished,
            overwrite=finished,
            source=self.task_source(fold),
        )
        test = data.test
        predictions = result.get("predictions", {}).get("test")
        return {
            "metrics": {k: v for k, v in result.items() if k.startswith(("val_", "test_"))},
            "trainable_params": result["trainable_params"],
            "predictions": {
                "y_true": [e.label for e in test],
                "y_pred": None if predictions is None else predictions.reshape(len(test), -1)[:, 0],
            },
            "tokens_per_s": result.get("train_tokens_per_s"),
            "overflow": result.get("overflow"),
            "run_dir": str(run_dir),
            "lr": config.lr,
        }

    def make_row(self, method: str, fold: str, data, result: dict, seconds: float) -> dict:
        row = {"method": method, "fold": fold}
        if self.command:
            row["command"] = self.command
        metrics = result["metrics"]
        row.update({f"test_{m}": _number(metrics.get(f"test_{m}")) for m in self.spec.metrics})
        row.update({f"val_{m}": _number(metrics.get(f"val_{m}")) for m in self.spec.metrics})
        row.update(
            trainable_params=result.get("trainable_params"),
            seconds=round(seconds, 2),
            seed=self.settings.seed,
            n_train=len(data.train),
            n_val=len(data.val),
            n_test=len(data.test),
        )
        numbers = ("lr", "tokens_per_s", "best_step", "steps", "n_truncated", "features_seconds", "alpha")
        for key in (*numbers, "n_fit"):
            if result.get(key) is not None:
                row[key] = _number(result[key])
        if result.get("refit") is not None:
            row["refit"] = result["refit"]
        # The anchors of the data set the row was made on (a dta folder may be Davis, KIBA or neither).
        if "dataset" in data.info:
            row["dataset"] = data.info["dataset"]
        row["published_anchors"] = _jsonable(self.spec.anchors_for(data.info))
        if result.get("overflow"):
            row["overflow"] = _jsonable(result["overflow"])
        row["settings"] = _jsonable(self.settings.comparable(method))
        return row

    def plot(self, row: dict, result: dict) -> None:
        pred = result.get("predictions") or {}
        if self.spec.head != "regression" or pred.get("y_pred") is None or not len(pred["y_true"]):
            return
        path = self.dir / "plots" / f"{row['method']}__{row['fold']}.png"
        primary = f"test_{self.spec.primary_metric}"
        title = f"{self.spec.name} {row['fold']}: {row['method']} ({primary} {row[primary]:.4g})"
        plots.predicted_vs_true(list(pred["y_true"]), list(pred["y_pred"]), path, title=title)

    # ---- tables ----------------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        order = {m: i for i, m in enumerate(ALL_METHODS)}
        return sorted(self.existing_rows().values(), key=lambda r: (order[r["method"]], r["fold"]))

    def summary(self, rows: list[dict]) -> list[dict]:
        """Mean and std over folds per method (only for multi-fold tasks)."""
        out = []
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            entry = {"method": method, "folds": len(mine)}
            for m in self.spec.metrics:
                values = [r[f"test_{m}"] for r in mine if r.get(f"test_{m}") is not None]
                if values:
                    entry[f"test_{m}"] = statistics.fmean(values)
                    entry[f"test_{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            entry["trainable_params"] = mine[0]["trainable_params"]
            entry["seconds"] = round(sum(r["seconds"] for r in mine), 2)
            out.append(entry)
        return out

    def write_tables(self) -> None:
        rows = self.rows()
        if not rows or not distributed.is_main_process():
            return
        multi = len({r["fold"] for r in rows}) > 1
        record = {
            "task": self.spec.name,
            "model": self.settings.model,
            "settings": _jsonable(self.settings.comparable()),
            "primary_metric": self.spec.primary_metric,
            "rows": [{k: v for k, v in r.items() if k not in PER_BENCH_KEYS} for r in rows],
        }
        if multi:
            record["summary"] = self.summary(rows)
            self.plot_folds(rows)
        anchors = self.anchors(rows)
        if anchors:
            record["published_anchors"] = [
                {"model": n, **{f"test_{k}": v for k, v in m.items()}} for n, m in anchors
            ]
            record["beats"] = self.beats(record.get("summary") or rows, anchors)
        io.write_json(self.out / f"{self.spec.name}.json", record)
        markdown = self.markdown(rows, record.get("summary"), record.get("beats"))
        io.write_text(self.out / f"{self.spec.name}.md", markdown)

    def anchors(self, rows: list[dict]) -> list[tuple[str, dict[str, float]]]:
        """The published anchors of the data the rows were made on (rows of one bench share their settings;
        rows saved before rows recorded them fall back to the task's)."""
        return [(name, m) for name, m in rows[0].get("published_anchors", self.spec.published_anchors)]

    def markdown(self, rows: list[dict], summary: list[dict] | None, beaten: dict | None = None) -> str:
        s, first = self.settings, rows[0]
        metrics = [f"test_{m}" for m in self.spec.metrics]
        lines = [
            f"# bench: {self.spec.name} on {s.model}",
            "",
            f"{first['n_train']} train / {first['n_val']} val / {first['n_test']} test examples"
            + (" (first fold)" if summary else "")
            + f"; seed {s.seed}; epochs {s.epochs or self.spec.defaults.get('epochs', 2.0)}; "
            f"batch {s.batch_size} x {s.grad_accum} accumulation. Model selection on the validation split "
            f"by {self.spec.primary_metric}. `trainable_params` n/a: no neural weights."
            + (f" Data set: {first['dataset']}." if first.get("dataset") else ""),
            "",
        ]
        if s.refit_train_val:
            lines += [
                "Classical rows refit on train + val after selection (`--refit-train-val`): their test "
                "metrics are the refit model's, their val metrics the selection model's.",
                "",
            ]
        columns = ["method", *(["fold"] if summary else []), *metrics, "trainable_params", "seconds"]
        lines += [_md_row(columns), _md_row(["---"] * len(columns))]
        lines += [_md_row([_fmt(r.get(c)) for c in columns]) for r in rows]
        if summary:
            columns = ["method", "folds", *metrics, "trainable_params", "seconds"]
            lines += ["", "Mean +- std over folds:", "", _md_row(columns), _md_row(["---"] * len(columns))]
            for r in summary:
                cells = [r["method"], str(r["folds"])]
                cells += [f"{_fmt(r.get(m))} +- {_fmt(r.get(m + '_std'))}" for m in metrics]
                cells += [_fmt(r["trainable_params"]), _fmt(r["seconds"])]
                lines.append(_md_row(cells))
        if s.tag_options:
            lines += ["", f"Tag row's own settings (`--tag-option`): {s.tag_options}."]
        commands = list(dict.fromkeys(r["command"] for r in rows if r.get("command")))
        if commands:
            lines += ["", "Made by:", ""] + [f"* `{c}`" for c in commands]
        if self.spec.paper_reference:
            lines += ["", f"Paper, LLaMA-7B, full data (test MSE): {self.spec.paper_reference}."]
        anchors = self.anchors(rows)
        if not anchors and first.get("dataset"):
            lines += ["", f"Published anchors: none for this data set ({first['dataset']})."]
        if anchors:
            lines += ["", "Published anchors (their papers, full training data):", ""]
            lines += [f"* {anchor_text(name, m)}" for name, m in anchors]
            lines += ["", "Rows that beat an anchor (better on every metric it reports): "]
            lines[-1] += (
                "; ".join(f"{m} beats {', '.join(a)}" for m, a in beaten.items()) if beaten else "none."
            )
        return "\n".join(lines) + "\n"

    @staticmethod
    def beats(rows: list[dict], anchors) -> dict[str, list[str]]:
        """method -> the anchors it beats (per-fold rows: by their mean, as the anchors are reported)."""
        out = {}
        for r in rows:
            won = [
                name for name, m in anchors if all(is_better(k, r.get(f"test_{k}"), v) for k, v in m.items())
            ]
            if won:
                out[f"{r['method']}" + (f"/{r['fold']}" if "fold" in r else "")] = won
        return out

    def plot_folds(self, rows: list[dict]) -> None:
        """Per-fold bars of every metric, one chart per metric, methods side by side."""
        for metric in self.spec.metrics:
            groups: dict[str, dict[str, float]] = {}
            for r in rows:
                if r.get(f"test_{metric}") is not None:
                    groups.setdefault(r["method"], {})[r["fold"]] = r[f"test_{metric}"]
            if groups:
                title = f"{self.spec.name} on {self.settings.model}: test {metric} per fold"
                plots.grouped_bars(groups, self.dir / "plots" / f"folds_{metric}.png", metric, title)


def run_bench(
    settings: BenchSettings, out: str | Path, *, resume=False, overwrite=False, log=print, command=None
) -> list[dict]:
    return Bench(settings, out, log=log, command=command).run(resume=resume, overwrite=overwrite)


def _number(value):
    if value is None:
        return None
    value = float(value) if not isinstance(value, int) else value
    return None if isinstance(value, float) and math.isnan(value) else value


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
