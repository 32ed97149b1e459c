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

EXPERIMENT = "ptqflow"
_EXPS_MARK = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


def project_root(cwd: str | Path | None = None) -> Path:
    """The project folder; from inside a DVC temporary experiment copy, the project it was copied from."""
    cwd = str(Path(cwd or os.getcwd()).resolve())
    if _EXPS_MARK in cwd + os.sep:
        return Path((cwd + os.sep).split(_EXPS_MARK)[0])
    return Path(cwd)


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
    def __init__(self, mlflow_module: Any | None) -> None:
        self._mlflow = mlflow_module

    def log_params(self, params: dict) -> None:
        if self._mlflow:
            flat = _flatten_params(params)
            self._mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})

    def log_metrics(self, metrics: dict) -> None:
        if self._mlflow:
            self._mlflow.log_metrics(flatten(metrics))

    def log_artifact(self, path: str | Path) -> None:
        if self._mlflow and Path(path).exists():
            self._mlflow.log_artifact(str(path))

    def set_tags(self, tags: dict) -> None:
        if self._mlflow:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})


def _flatten_params(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_flatten_params(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = data
    return out


@contextlib.contextmanager
def stage_run(name: str, enabled: bool = True) -> Iterator[_Run]:
    """An MLflow run named `name` in experiment `ptqflow` (a no-op run when tracking is off)."""
    if not tracking_enabled(enabled):
        yield _Run(None)
        return
    for noisy in ("alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=name):
        mlflow.set_tag("stage", name.split("@")[0])
        yield _Run(mlflow)
