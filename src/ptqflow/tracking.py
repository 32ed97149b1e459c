"""MLflow tracking: one parent run per pipeline execution, one nested child run per stage invocation.

The parent is named after the DVC experiment (`DVC_EXP_NAME`, set by `dvc exp run`), or, for a plain
`dvc repro`, after the git revision plus a short hash of params.yaml; re-running the same configuration
adds to the same parent. It holds every params section and, once the report stage ran, the report and its
figures. Children (`prepare`, `finetune`, `quantize@fp32`, `evaluate@fp32`, ..., `package`) are tagged
`stage`, `variant`, `scheme`, `dvc_experiment`, `git_commit`. The first stage of an execution creates the
parent; the others find it by its `ptqflow.execution` tag. Creation is serialized by a lock file shared by
every workspace of the project (queued experiments run in copies), so parallel experiments each get one.

The store is SQLite at `<project root>/mlflow.db` as an absolute URI, so runs made by `dvc exp run --temp/
--queue` (in a copy under `.dvc/tmp/exps/`) land in the project's store too; `MLFLOW_TRACKING_URI` overrides
it (a tracking server). `PTQFLOW_TRACKING=0` (or --no-tracking on a stage) switches tracking off.
Numbers logged are the same ones written to metrics/ and reports/.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from .io import project_root

EXPERIMENT = "ptqflow"
EXECUTION_TAG = "ptqflow.execution"
PARENT_SECTIONS = ("data", "model", "train", "eval", "benchmark", "report", "package")


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


def git_commit(cwd: str | Path | None = None) -> str:
    """The checked-out commit (a DVC experiment's baseline when DVC says so), or 'unknown' outside git."""
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def execution(params_file: str | Path = "params.yaml") -> dict[str, str]:
    """What identifies this pipeline execution: {key, name, dvc_experiment, git_commit}."""
    commit = git_commit()
    exp = os.environ.get("DVC_EXP_NAME", "")
    path = Path(params_file)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8] if path.is_file() else "noparams"
    if exp:
        return {"key": f"exp:{exp}:{commit}", "name": exp, "dvc_experiment": exp, "git_commit": commit}
    return {"key": f"repro:{commit}:{digest}", "name": f"repro {commit[:7]} params {digest}", "dvc_experiment": "",
            "git_commit": commit}


class _Run:
    """Collects what a stage logs; `stage_run` writes it to MLflow in one go when the stage ends."""

    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self.metrics: dict[str, float] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: list[str] = []
        self.parent_artifacts: list[tuple[str, str | None]] = []
        self.inputs: list[dict] = []
        self.after: list = []  # callables(run_id, parent_id) run inside the child after it is written

    def log_params(self, params: dict) -> None:
        self.params.update({k: str(v)[:6000] for k, v in _flatten_params(params).items()})

    def log_metrics(self, metrics: dict) -> None:
        self.metrics.update(flatten(metrics))

    def log_artifact(self, path: str | Path) -> None:
        if Path(path).exists():
            self.artifacts.append(str(Path(path).resolve()))

    def log_parent_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """An artifact of the whole execution (the report, its figures), logged on the parent run."""
        if Path(path).exists():
            self.parent_artifacts.append((str(Path(path).resolve()), folder))

    def log_dataset(self, name: str, source: str | Path, digest: str, context: str, tags: dict) -> None:
        """Dataset lineage (`mlflow.log_input`): where the data came from, its content hash, and counts as tags."""
        self.inputs.append({"name": name, "source": str(source), "digest": digest, "context": context,
                            "tags": {k: str(v) for k, v in tags.items()}})

    def set_tags(self, tags: dict) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})

    def then(self, fn) -> None:
        self.after.append(fn)


def _flatten_params(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_flatten_params(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = data
    return out


def _lock_path(uri: str) -> str:
    """One lock for every workspace writing to `uri` (queued experiments run in copies of the project)."""
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///"):] + ".lock"
    import tempfile

    return str(Path(tempfile.gettempdir()) / f"ptqflow-mlflow-{hashlib.sha256(uri.encode()).hexdigest()[:12]}.lock")


def parent_run(client, experiment_id: str, ex: dict, params_file: str | Path = "params.yaml") -> str:
    """The id of this execution's parent run, created (with every params section) if it does not exist yet.
    Call under the lock."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{EXECUTION_TAG}` = '{ex['key']}' and tags.stage = 'pipeline'",
                               max_results=1, order_by=["attributes.start_time DESC"])
    if found:
        return found[0].info.run_id
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    tags = {EXECUTION_TAG: ex["key"], "dvc_experiment": ex["dvc_experiment"], "git_commit": ex["git_commit"],
            "stage": "pipeline", MLFLOW_RUN_NAME: ex["name"]}
    run = client.create_run(experiment_id, tags=tags, run_name=ex["name"])
    from .config import load_params

    try:
        params = load_params(params_file)
    except Exception:  # noqa: BLE001 - the stage itself reports a bad params file; the parent just has fewer params
        params = {}
    flat = _flatten_params({k: params[k] for k in PARENT_SECTIONS if k in params})
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def _write(name: str, run: _Run, status: str, started_ms: int) -> None:
    """Write one finished stage run as a child of its execution's parent."""
    for noisy in ("alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import mlflow
    from filelock import FileLock

    uri = tracking_uri()
    ex = execution()
    mlflow.set_tracking_uri(uri)
    with FileLock(_lock_path(uri), timeout=600):  # SQLite takes one writer at a time; the parent is created once
        client = mlflow.tracking.MlflowClient(uri)  # (opening a new SQLite store creates its tables: inside the lock)
        experiment = mlflow.set_experiment(EXPERIMENT)
        parent = parent_run(client, experiment.experiment_id, ex)
        tags = {"stage": name.split("@")[0], "dvc_experiment": ex["dvc_experiment"], "git_commit": ex["git_commit"],
                EXECUTION_TAG: ex["key"], **run.tags}
        with mlflow.start_run(run_name=name, parent_run_id=parent, nested=True, tags=tags) as active:
            if run.params:
                mlflow.log_params(run.params)
            if run.metrics:
                mlflow.log_metrics(run.metrics)
            for path in run.artifacts:
                mlflow.log_artifact(path)
            for item in run.inputs:
                _log_input(mlflow, item)
            run_id = active.info.run_id
            for fn in run.after:
                fn(run_id, parent)
        client.set_terminated(run_id, status=status)
        client.set_tag(run_id, "started_ms", str(started_ms))
        for path, folder in run.parent_artifacts:
            (client.log_artifacts if Path(path).is_dir() else client.log_artifact)(parent, path, folder)
        if status == "FAILED":
            client.set_terminated(parent, status="FAILED")
        elif name in ("report", "package"):  # the last stages: the execution is complete (a later re-run adds to it)
            client.set_terminated(parent, status="FINISHED")


def _log_input(mlflow, item: dict) -> None:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    where = Path(item["source"])
    try:
        source = resolve_dataset_source(str(where.resolve()) if where.exists() else item["source"])
    except Exception:  # noqa: BLE001 - a Hub id or other string MLflow has no source class for
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        source = HTTPDatasetSource(url=f"https://huggingface.co/datasets/{item['source']}")
    dataset = MetaDataset(source=source, name=item["name"], digest=item["digest"][:36])
    mlflow.log_input(dataset, context=item["context"], tags=item["tags"])


@contextlib.contextmanager
def stage_run(name: str, enabled: bool = True) -> Iterator[_Run]:
    """Collect a stage's params, metrics, tags and artifacts; on exit write them as MLflow run `name`, a child
    of this execution's parent run in experiment `ptqflow` (status FAILED if the stage raised). Nothing is
    written when tracking is off."""
    import time

    run = _Run()
    started = int(time.time() * 1000)
    try:
        yield run
    except BaseException as exc:
        if tracking_enabled(enabled):
            run.set_tags({"error": f"{type(exc).__name__}: {exc}"[:500]})
            run.after.clear()
            _write(name, run, "FAILED", started)
        raise
    if tracking_enabled(enabled):
        run.metrics.setdefault("stage_wall_time_s", round(time.time() - started / 1000, 3))
        _write(name, run, "FINISHED", started)
