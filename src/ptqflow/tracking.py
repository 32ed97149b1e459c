"""MLflow tracking: one run per stage invocation (`prepare`, `finetune`, `quantize@fp32`, `evaluate@fp32`, ...).

The store is SQLite at `<project root>/mlflow.db` as an absolute URI, so runs made by
`dvc exp run --temp/--queue` (in a copy under `.dvc/tmp/exps/`) land in the project's store too;
`MLFLOW_TRACKING_URI` overrides it. `PTQFLOW_TRACKING=0` (or --no-tracking on a stage) switches
tracking off, for machines without MLflow. Numbers logged are the same ones written to metrics/*.json.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from .io import project_root

EXPERIMENT = "ptqflow"
def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def tracking_enabled(flag: bool = True) -> bool:
    return flag and os.environ.get("PTQFLOW_TRACKING", "1").lower() not in ("0", "false", "off", "no")


def flatten(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as {"a.b.c": value}; strings, lists and None are skipped."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out[prefix[:-1]] = float(data)
    return out


class _Run:
    """Collects what a stage logs; `stage_run` writes it to MLflow in one go when the stage ends."""

    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self.metrics: dict[str, float] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: list[str] = []

    def log_params(self, params: dict) -> None:
        self.params.update({k: str(v)[:6000] for k, v in _flatten_params(params).items()})

    def log_metrics(self, metrics: dict) -> None:
        self.metrics.update(flatten(metrics))

    def log_artifact(self, path: str | Path) -> None:
        if Path(path).exists():
            self.artifacts.append(str(Path(path).resolve()))

    def set_tags(self, tags: dict) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})


def _flatten_params(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_flatten_params(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = data
    return out


def _write(name: str, run: _Run, status: str, started_ms: int) -> None:
    """Write one finished run. Parallel stages (`dvc exp run -j N`) share one SQLite file: writes are
    serialized with a lock file beside it, so none is lost to "database is locked"."""
    for noisy in ("alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import mlflow
    from filelock import FileLock

    uri = tracking_uri()
    lock_path = uri[len("sqlite:///"):] + ".lock" if uri.startswith("sqlite:///") else str(project_root() / ".mlflow.lock")
    with FileLock(lock_path, timeout=600):
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(EXPERIMENT)
        with mlflow.start_run(run_name=name) as active:
            mlflow.set_tags({"stage": name.split("@")[0], **run.tags})
            if run.params:
                mlflow.log_params(run.params)
            if run.metrics:
                mlflow.log_metrics(run.metrics)
            for path in run.artifacts:
                mlflow.log_artifact(path)
            run_id = active.info.run_id
        mlflow.tracking.MlflowClient().set_terminated(run_id, status=status)
        mlflow.tracking.MlflowClient().set_tag(run_id, "started_ms", str(started_ms))


@contextlib.contextmanager
def stage_run(name: str, enabled: bool = True) -> Iterator[_Run]:
    """Collect a stage's params, metrics, tags and artifacts; on exit write them as MLflow run `name` in
    experiment `ptqflow` (status FAILED if the stage raised). Nothing is written when tracking is off."""
    import time

    run = _Run()
    started = int(time.time() * 1000)
    try:
        yield run
    except BaseException as exc:
        if tracking_enabled(enabled):
            run.set_tags({"error": f"{type(exc).__name__}: {exc}"[:500]})
            _write(name, run, "FAILED", started)
        raise
    if tracking_enabled(enabled):
        run.metrics.setdefault("stage_wall_time_s", round(time.time() - started / 1000, 3))
        _write(name, run, "FINISHED", started)
