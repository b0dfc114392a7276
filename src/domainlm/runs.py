"""Run directories: resolved config, log, metrics and a status that only says "complete" at the end; and
`RunConfig`, what a tag run is, as its config.yaml records it."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from domainlm import distributed, io
from domainlm.corpus import CorpusSource
from domainlm.errors import DomainLMError
from domainlm.tasks.resolve import TaskSource
from domainlm.training import TrainConfig

STATUS_FILE = "status.json"
CONFIG_FILE = "config.yaml"
RUN_CONFIG_VERSION = 1  # bump when a saved RunConfig would read back differently


@dataclass
class RunConfig:
    """What a tag run is: written to its config.yaml and read back by eval, predict and --resume.

    `isolate` and `reuse` are what the trainer resolved from `train` (None until it has); eval and predict
    use them, never the requested values."""

    model: str
    train: TrainConfig = field(default_factory=TrainConfig)  # holds the stage
    task: TaskSource | None = None  # stages 2 and 3: the labelled task
    corpus: CorpusSource | None = None  # stage 1: unlabelled text for one domain tag
    tags: list[str] = field(default_factory=list)  # tag libraries to start from; they merge
    prefer: str | dict[str, str] = "error"  # who wins a merge conflict: error, first, last or {tag: library}
    isolate: bool | None = None
    reuse: bool | None = None
    version: int = RUN_CONFIG_VERSION

    def __post_init__(self):
        self.tags = [str(t) for t in self.tags]

    @property
    def stage(self) -> str:
        return self.train.stage

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RunConfig:
        """The run `domainlm train`'s given options describe (`prefer` parsed); an option not given takes the
        default of the configuration field it sets, so each default is stated once, there."""

        def given(kind, **option_of: str) -> dict[str, Any]:
            """`kind`'s fields that were given, each under its own name or the option named in `option_of`."""
            names = {f.name: option_of.get(f.name, f.name) for f in dataclasses.fields(kind)}
            return {name: options[option] for name, option in names.items() if option in options}

        train = TrainConfig(**given(TrainConfig))
        char_level = tuple(options.get("char_level", ()))
        task = corpus = None
        if train.stage == "domain":
            fields = given(CorpusSource, path="corpus", limit="limit_train")
            corpus = CorpusSource(**{**fields, "char_level": options.get("tag") in char_level})
        else:
            task = TaskSource(**{**given(TaskSource, preset="task"), "char_level": char_level})
        tags, prefer = options.get("tags", []), options.get("prefer", "error")
        return cls(options.get("model", "minilm"), train, task, corpus, tags=tags, prefer=prefer)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML data (tuples as lists), equal to what config.yaml reads back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, record: dict[str, Any], source: str = "run configuration") -> RunConfig:
        version = record.get("version")
        if not isinstance(version, int) or version < RUN_CONFIG_VERSION:
            raise DomainLMError(
                f"{source}: run configuration version {version!r} is not the one this domainlm reads "
                f"({RUN_CONFIG_VERSION}); it is no tag run, or an older domainlm wrote it: train it again"
            )
        if version > RUN_CONFIG_VERSION:
            raise DomainLMError(
                f"{source}: run configuration version {version} is newer than this domainlm reads "
                f"({RUN_CONFIG_VERSION}); upgrade domainlm"
            )
        record = dict(record)
        try:
            record["train"] = TrainConfig.from_dict(record.get("train") or {})
            for key, kind in (("task", TaskSource), ("corpus", CorpusSource)):
                if record.get(key) is not None:
                    record[key] = kind(**record[key])
            return cls(**record)
        except TypeError as e:  # unknown or missing fields
            raise DomainLMError(f"{source}: not a run configuration domainlm can read ({e})") from None

    @classmethod
    def load(cls, run_dir: str | Path) -> RunConfig:
        path = Path(run_dir) / CONFIG_FILE
        if not path.is_file():
            raise DomainLMError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
        return cls.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, source=str(path))


def finished_run_config(run_dir: str | Path) -> RunConfig:
    """The configuration of a run that completed; an unfinished run is refused."""
    status = RunDirectory.read_status(run_dir)
    if status != "complete" and (Path(run_dir) / CONFIG_FILE).is_file():
        raise DomainLMError(
            f"{run_dir} did not finish (status: {status}); resume it with `domainlm train --resume`"
        )
    return RunConfig.load(run_dir)


class RunDirectory:
    """One run's folder. `status.json` reads "running" until `complete()`; a killed or failed run never
    looks finished, and `--resume` picks its checkpoint up again.

    Under a launcher with several processes only the main one writes the folder: the others get a scratch
    folder of their own (removed at the end) for whatever a run writes, and a silent log, so code writing
    under `path` needs no check of its own (`training.fit` reads and writes checkpoints on the main
    process only)."""

    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False):
        self.scratch = not distributed.is_main_process()
        if self.scratch:
            self.path = Path(tempfile.mkdtemp(prefix=f"domainlm-process{distributed.process_index()}-"))
            self.started = time.time()
            self.logger = logging.getLogger(f"domainlm.scratch.{self.path.name}")
            self.logger.propagate = False  # the main process logs for all
            return
        self.path = Path(path)
        status = self.read_status(self.path)
        if status == "complete" and not overwrite:
            raise DomainLMError(f"{self.path} already holds a complete run; pass --overwrite to replace it")
        if status in {"running", "failed"} and not (resume or overwrite):
            raise DomainLMError(
                f"{self.path} holds an unfinished run ({status}); pass --resume to continue it "
                "or --overwrite to start again"
            )
        if overwrite and status is not None:
            shutil.rmtree(self.path)  # only ever a former run directory (it has a status file)
        self.path.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self._set_status("running")
        self.logger = _file_logger(self.path / "train.log")

    @staticmethod
    def read_status(path: str | Path) -> str | None:
        """A run folder's status (None: not a run), read without opening it, which would mark it running."""
        f = Path(path) / STATUS_FILE
        return json.loads(f.read_text(encoding="utf-8")).get("status") if f.exists() else None

    def _set_status(self, status: str, **extra: Any) -> None:
        io.write_json(self.path / STATUS_FILE, {"status": status, "time": time.time(), **extra})

    def write_config(self, config: dict[str, Any]) -> None:
        io.write_text(self.path / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        io.write_json(self.path / "metrics.json", metrics)

    def log(self, message: str) -> None:
        self.logger.info(message)

    def complete(self) -> None:
        self._set_status("complete", seconds=round(time.time() - self.started, 2))

    def fail(self, error: BaseException) -> None:
        self.logger.error("failed: %s", error)
        self._set_status("failed", error=str(error))

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.fail(exc)
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
        if self.scratch:
            shutil.rmtree(self.path, ignore_errors=True)


def _file_logger(path: Path) -> logging.Logger:
    logger = logging.getLogger(f"domainlm.run.{path.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = True  # also to the `domainlm` logger, which the CLI shows on stderr
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger
