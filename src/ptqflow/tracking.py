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
Numbers logged are the same ones written to metrics/ and reports/. Every metric, param and tag name goes through
`mlflow_key` (one place), so a name built from a model's own parts or a runtime's record is valid by construction;
and tracking never stops a stage: a failure to write a run is one warning line, the stage's outputs and DVC's
record stand.

Writing a run costs a stage about 2 s (importing MLflow and opening the store), so a finished stage spools
its run instead (`.ptqflow/mlflow-spool/` under the project root: the record, with its execution and params
taken at the time, and copies of its artifacts) and starts, unless one is already waiting, one detached
process that writes the spool FLUSH_DELAY_S seconds later: stages ending within that window share one write.
A failed stage, the last stages (report, package) and the package's registration write at once, after
everything spooled before them, so when `dvc repro` ends every run is in the store. `python -m
ptqflow.tracking --flush` writes the spool by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from .errors import warn
from .io import project_root

EXPERIMENT = "ptqflow"
EXECUTION_TAG = "ptqflow.execution"
PARENT_SECTIONS = ("data", "model", "train", "eval", "benchmark", "report", "package")
SPOOL = ".ptqflow/mlflow-spool"  # under the project root: finished runs waiting to be written
FLUSH_DELAY_S = float(os.environ.get("PTQFLOW_FLUSH_DELAY_S", "20"))  # a spooled run is in MLflow within about this long
# MLflow 3's UI opens an experiment of unknown kind on its GenAI traces overview; this tag makes it open on the
# runs table (the parent runs and their stage runs), as for classic model development
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
FLUSH_NOW = ("report", "package")  # the last stages: everything spooled is written when they end


MAX_KEY = 250  # MLflow's longest metric / param / tag name


def mlflow_key(name: Any) -> str:
    """A name MLflow accepts for a metric, param or tag, from any string: a character other than an ASCII letter,
    digit, `_ - . : /` or space becomes `_`; an empty, `.` or `..` path segment (a leading or doubled `/`) becomes
    `_`; a name over 250 characters is cut and ends in a hash of the whole, so that distinct names stay distinct."""
    import re

    text = re.sub(r"[^A-Za-z0-9_\-.:/ ]", "_", str(name))
    text = "/".join(seg if seg not in ("", ".", "..") else "_" for seg in text.split("/"))
    return _hashed(text, name) if len(text) > MAX_KEY else text


def _hashed(key: str, name: Any) -> str:
    """`key` cut to fit MAX_KEY with a hash of the original `name` after it: distinct names stay distinct."""
    return f"{key[: MAX_KEY - 10]}-{hashlib.sha256(str(name).encode()).hexdigest()[:9]}"


def _keyed(items: dict[str, Any], taken: dict[str, str]) -> dict[str, Any]:
    """`items` with every name through mlflow_key; two names that would become one keep apart by a hash suffix.
    `taken` (valid name -> original) is the run's record of names given so far."""
    out = {}
    for name, value in items.items():
        key = mlflow_key(name)
        if taken.setdefault(key, str(name)) != str(name):
            key = _hashed(key, name)
            taken[key] = str(name)
        out[key] = value
    return out


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
        self.names: dict[str, str] = {}  # valid MLflow name -> the name the stage gave (mlflow_key)

    def log_params(self, params: dict) -> None:
        self.params.update(_keyed({k: str(v)[:6000] for k, v in _flatten_params(params).items()}, self.names))

    def log_metrics(self, metrics: dict) -> None:
        self.metrics.update(_keyed(flatten(metrics), self.names))

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
                            "tags": _keyed({k: str(v) for k, v in tags.items()}, {})})

    def set_tags(self, tags: dict) -> None:
        self.tags.update(_keyed({k: str(v)[:8000] for k, v in tags.items()}, self.names))

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


def parent_params(params_file: str | Path = "params.yaml") -> dict[str, str]:
    """The params sections a parent run holds, flattened ("train.lr": "0.001")."""
    from .config import load_params

    try:
        params = load_params(params_file)
    except Exception:  # noqa: BLE001 - the stage itself reports a bad params file; the parent just has fewer params
        params = {}
    flat = _flatten_params({k: params[k] for k in PARENT_SECTIONS if k in params})
    return _keyed({k: str(v)[:6000] for k, v in flat.items()}, {})


def parent_run(client, experiment_id: str, ex: dict, params: dict[str, str]) -> str:
    """The id of this execution's parent run, created (with `params`, parent_params()) if it does not exist
    yet. Call under the lock."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{EXECUTION_TAG}` = '{ex['key']}' and tags.stage = 'pipeline'",
                               max_results=1, order_by=["attributes.start_time DESC"])
    if found:
        return found[0].info.run_id
    from mlflow.entities import Param
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    tags = {EXECUTION_TAG: ex["key"], "dvc_experiment": ex["dvc_experiment"], "git_commit": ex["git_commit"],
            "stage": "pipeline", MLFLOW_RUN_NAME: ex["name"]}
    run = client.create_run(experiment_id, tags=tags, run_name=ex["name"])
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def spool_dir() -> Path:
    return project_root() / SPOOL


def _record(name: str, run: _Run, status: str, started_ms: int) -> dict:
    """Everything needed to write the run later, from any process: the execution and the parent's params are
    taken now (the stage's commit, params and experiment), not when it is written."""
    return {"name": name, "status": status, "started_ms": started_ms, "uri": tracking_uri(), "execution": execution(),
            "parent_params": parent_params(), "params": run.params, "metrics": run.metrics, "tags": run.tags,
            "artifacts": list(run.artifacts),
            "inputs": [{**i, "source": str(Path(i["source"]).resolve()) if Path(i["source"]).exists() else i["source"]}
                       for i in run.inputs]}


def _spool(record: dict) -> None:
    """Queue a finished stage's run in the spool (no MLflow import: about 2 s a stage): its artifacts are copied
    (what the stage wrote, even if a later run rewrites the file), the record renamed into place whole."""
    import json
    import shutil
    import time

    folder = spool_dir()
    stem = f"{time.time_ns():020d}-{os.getpid()}"
    copies = []
    for i, path in enumerate(record["artifacts"]):
        dst = folder / stem / str(i) / Path(path).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if Path(path).is_dir() else shutil.copy2)(path, dst)
        copies.append(str(dst))
    tmp = folder / f".{stem}.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps({**record, "artifacts": copies}))
    os.replace(tmp, folder / f"{stem}.json")


def _schedule_flush() -> None:
    """Start one detached process that writes the spool to MLflow in FLUSH_DELAY_S seconds, unless one is
    already waiting: stages that end within that window share one MLflow import."""
    import subprocess
    import sys
    import time

    marker = spool_dir() / ".flush-scheduled"
    try:
        if marker.is_file() and time.time() - marker.stat().st_mtime > 10 * FLUSH_DELAY_S:
            marker.unlink(missing_ok=True)  # its process died before flushing
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    subprocess.Popen([sys.executable, "-m", "ptqflow.tracking", "--flush-after", str(FLUSH_DELAY_S), str(spool_dir())],
                     cwd=project_root(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)


def flush(folder: str | Path | None = None) -> int:
    """Write every spooled run to its MLflow store (under that store's lock, oldest first) and remove it;
    returns how many. Imports MLflow only when there is something to write."""
    import json

    folder = Path(folder) if folder else spool_dir()
    uris = set()
    for path in folder.glob("*.json") if folder.is_dir() else []:
        with contextlib.suppress(FileNotFoundError, ValueError):  # taken by another flusher meanwhile
            uris.add(json.loads(path.read_text())["uri"])
    written = 0
    for uri in sorted(uris):
        with _store(uri) as (mlflow, client, experiment_id):
            written += _write_spooled(mlflow, client, experiment_id, folder, uri)
    return written


def _write_spooled(mlflow, client, experiment_id: str, folder: Path, uri: str) -> int:
    import json
    import shutil

    written = 0
    for path in sorted(folder.glob("*.json")):  # under the lock: no other flusher of this store is running
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        if record["uri"] != uri:
            continue  # another store's (MLFLOW_TRACKING_URI differed): left for a flush against it
        try:
            _write_record(mlflow, client, experiment_id, record)
            written += 1
        except Exception as exc:  # noqa: BLE001 - one bad record must not hold back the others, nor come back forever
            warn(f"MLflow did not take the spooled run of stage {record.get('name')} ({_one_line(exc)}); dropped")
        path.unlink()
        shutil.rmtree(folder / path.stem, ignore_errors=True)
    return written


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


@contextlib.contextmanager
def _store(uri: str):
    """MLflow pointed at `uri`, the `ptqflow` experiment, under the store's lock (SQLite takes one writer at a
    time; a parent is created once)."""
    for noisy in ("alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import mlflow
    from filelock import FileLock

    mlflow.set_tracking_uri(uri)
    with FileLock(_lock_path(uri), timeout=600):
        client = mlflow.tracking.MlflowClient(uri)  # (opening a new SQLite store creates its tables: inside the lock)
        experiment = mlflow.set_experiment(EXPERIMENT)
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # `mlflow ui` opens on the runs table
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        yield mlflow, client, experiment.experiment_id


def _write_record(mlflow, client, experiment_id: str, record: dict, run: _Run | None = None) -> None:
    """Write one finished stage run as a child of its execution's parent (`run`: the live one, with its
    after-callbacks and parent artifacts)."""
    ex = record["execution"]
    parent = parent_run(client, experiment_id, ex, record["parent_params"])
    tags = {"stage": record["name"].split("@")[0], "dvc_experiment": ex["dvc_experiment"], "git_commit": ex["git_commit"],
            EXECUTION_TAG: ex["key"], **record["tags"]}
    with mlflow.start_run(run_name=record["name"], parent_run_id=parent, nested=True, tags=tags,
                          experiment_id=experiment_id) as active:
        if record["params"]:
            mlflow.log_params(record["params"])
        if record["metrics"]:
            mlflow.log_metrics(record["metrics"])
        for path in record["artifacts"]:
            mlflow.log_artifact(path)
        for item in record["inputs"]:
            _log_input(mlflow, item)
        run_id = active.info.run_id
        for fn in (run.after if run else []):
            fn(run_id, parent)
    client.set_terminated(run_id, status=record["status"])
    client.set_tag(run_id, "started_ms", str(record["started_ms"]))
    for path, folder in (run.parent_artifacts if run else []):
        (client.log_artifacts if Path(path).is_dir() else client.log_artifact)(parent, path, folder)
    if record["status"] in ("FAILED", "KILLED"):  # the execution stopped here: not left "running" in the UI
        client.set_terminated(parent, status=record["status"])
    elif client.get_run(parent).info.status in ("FAILED", "KILLED") and record["name"] not in ("report", "package"):
        client.update_run(parent, status="RUNNING")  # resumed by the next `dvc repro`
    elif record["name"] in ("report", "package"):  # the last stages: the execution is complete (a later re-run adds to it)
        client.set_terminated(parent, status="FINISHED")


def _log_input(mlflow, item: dict) -> None:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    try:
        source = resolve_dataset_source(item["source"])
    except Exception:  # noqa: BLE001 - a Hub id or other string MLflow has no source class for
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        source = HTTPDatasetSource(url=f"https://huggingface.co/datasets/{item['source']}")
    dataset = MetaDataset(source=source, name=item["name"], digest=item["digest"][:36])
    mlflow.log_input(dataset, context=item["context"], tags=item["tags"])


def _write(name: str, run: _Run, status: str, started_ms: int) -> None:
    """A finished stage's run: spooled (written within FLUSH_DELAY_S by a detached process), or, for a failed
    stage, the last stages (report, package) and a run with after-callbacks, written now together with
    everything spooled before it."""
    try:
        record = _record(name, run, status, started_ms)
        if status == "FINISHED" and name not in FLUSH_NOW and not run.after and not run.parent_artifacts:
            _spool(record)
            _schedule_flush()
            return
        with _store(record["uri"]) as (mlflow, client, experiment_id):
            _write_spooled(mlflow, client, experiment_id, spool_dir(), record["uri"])  # what earlier stages spooled comes first
            _write_record(mlflow, client, experiment_id, record, run)
    except Exception as exc:  # noqa: BLE001 - tracking never stops a stage: its outputs and DVC's record stand
        warn(f"the MLflow run of stage {name} was not written ({_one_line(exc)}); the stage's outputs stand")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a kill, or DVC stopping its stage) raises KeyboardInterrupt like Ctrl-C, so the
    stage's run and its parent end as KILLED instead of staying "running" (main thread only; else a no-op)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stage_run(name: str, enabled: bool = True) -> Iterator[_Run]:
    """Collect a stage's params, metrics, tags and artifacts; on exit write them as MLflow run `name`, a child
    of this execution's parent run in experiment `ptqflow` (status FAILED if the stage raised). Nothing is
    written when tracking is off."""
    import time

    run = _Run()
    started = int(time.time() * 1000)
    try:
        with _sigterm_as_interrupt():
            yield run
    except BaseException as exc:
        if tracking_enabled(enabled):
            stopped = isinstance(exc, KeyboardInterrupt)  # Ctrl-C, or a kill (SIGTERM) of the stage
            run.set_tags({"error": "stopped (Ctrl-C or kill)" if stopped else f"{type(exc).__name__}: {exc}"[:500]})
            run.after.clear()
            _write(name, run, "KILLED" if stopped else "FAILED", started)
        raise
    if tracking_enabled(enabled):
        run.metrics.setdefault("stage_wall_time_s", round(time.time() - started / 1000, 3))
        _write(name, run, "FINISHED", started)


def main() -> None:
    """`python -m ptqflow.tracking --flush-after SECONDS SPOOL_DIR` (started detached by a stage) or
    `python -m ptqflow.tracking --flush` (now, from the project root)."""
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m ptqflow.tracking", description=main.__doc__)
    parser.add_argument("--flush", action="store_true", help="write the spooled runs to MLflow now")
    parser.add_argument("--flush-after", type=float, default=None, metavar="SECONDS")
    parser.add_argument("folder", nargs="?", default=None, help="spool folder (default: <project>/" + SPOOL + ")")
    args = parser.parse_args()
    folder = Path(args.folder) if args.folder else spool_dir()
    if args.flush_after is not None:
        time.sleep(args.flush_after)
        (folder / ".flush-scheduled").unlink(missing_ok=True)  # from now on a new stage schedules its own flush
    print(f"{flush(folder)} spooled runs written to {tracking_uri()}")


if __name__ == "__main__":
    main()
