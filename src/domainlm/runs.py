"""Run directories: resolved config, log, metrics and a status that only says "complete" at the end."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import yaml

from domainlm import io
from domainlm.errors import DomainLMError

STATUS_FILE = "status.json"


class RunDirectory:
    """One run's folder. `status.json` reads "running" until `complete()`; a killed or failed run never
    looks finished, and `--resume` picks its checkpoint up again."""

    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        status = self.status()
        if status == "complete" and not overwrite:
            raise DomainLMError(f"{self.path} already holds a complete run; pass --overwrite to replace it")
        if status in {"running", "failed"} and not (resume or overwrite):
            raise DomainLMError(
                f"{self.path} holds an unfinished run ({status}); pass --resume to continue it "
                "or --overwrite to start again"
            )
        if overwrite and status is not None:
            import shutil

            shutil.rmtree(self.path)  # only ever a former run directory (it has a status file)
        self.path.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self._set_status("running")
        self.logger = _file_logger(self.path / "train.log")

    def status(self) -> str | None:
        f = self.path / STATUS_FILE
        if not f.exists():
            return None
        import json

        return json.loads(f.read_text()).get("status")

    def _set_status(self, status: str, **extra: Any) -> None:
        io.write_json(self.path / STATUS_FILE, {"status": status, "time": time.time(), **extra})

    def write_config(self, config: dict[str, Any]) -> None:
        io.write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

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


def _file_logger(path: Path) -> logging.Logger:
    logger = logging.getLogger(f"domainlm.run.{path.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger
