"""The end-to-end tests' project: a throw-away copy of this repository (git + DVC) with a tiny config, and
the one `dvc repro` of it that test_pipeline.py's tests share (conftest.py's session fixture `e2e_project`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import ROOT


def definitions() -> dict:
    """Every variant's definition (the `all` set, composed from conf/ as `dvc exp run -S variants=all` would)."""
    from ptqflow.variant_sets import compose

    return compose("all")["variants"]


def cpu_skips(names: list[str]) -> list[str]:
    """Which of `names` this CPU does not run, decided by the stages' own code (registry.unavailable: CUDA-only
    kernels, half types emulated here, kernels without a fast path here; $PTQFLOW_CPU_FLAGS assumes another CPU)."""
    import torch

    from ptqflow.quantize import unavailable

    every = definitions()
    return [v for v in names if unavailable(v, every[v], torch.device("cpu"))]


E2E = ["fp32", "int8_scratch", "int8_dynamic", "int4_wo_ao"]  # DVC wiring (int4_wo_ao: a skipped variant); every scheme runs in-process elsewhere
SKIPPED = cpu_skips(E2E)  # on this CPU their stages run and say why they were not quantized or evaluated
VARIANTS = [v for v in E2E if v not in SKIPPED]
NOISE = ("Failed to load", "is an Enum subclass and is now natively supported", "interpreted in multiple ways",
         "MatMul8bitLt: inputs will be cast", "Add type hints to the `predict`", "recompile_limit")  # console.py drops these; no recompilation storm


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def make_project(root: Path, shared: Path, variants: list[str]) -> dict:
    """A throw-away copy of the project (git + DVC) with a tiny config; returns the environment to run it in."""
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, root / name)
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(max_train_samples=240, max_test_samples=120, max_length=32)
    params["model"].update(init="scratch", overrides={"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 32})  # NF4 on CPU: widths % 64
    params["train"].update(epochs=1, batch_size=16, eval_batch_size=64)
    params["eval"].update(batch_size=64)
    profiles = params["benchmark"]["profiles"]  # the default profiles, each on a few rows
    for name, rows in (("online", 4), ("batch", 8), ("fixed", 4)):
        profiles[name].update(rows=rows, batch_size=min(profiles[name]["batch_size"], 4), passes=1)
    params["benchmark"].update(rounds=3, warmup=1)
    every = definitions()
    params["variants"] = {v: every[v] for v in variants}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", PTQFLOW_TRACKING="1", HF_HUB_OFFLINE="1",
               PTQFLOW_MIRROR=str(shared), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    return env


def mlflow_runs(root: Path, env: dict) -> list[dict]:
    code = (
        "import mlflow, json; mlflow.set_tracking_uri('sqlite:///" + str(root / "mlflow.db") + "');"
        "df = mlflow.search_runs(experiment_names=['ptqflow']);"
        "print(json.dumps([{'name': r['tags.mlflow.runName'], 'status': r['status'], 'accuracy': r.get('metrics.accuracy'),"
        " 'stage': r['tags.stage'], 'parent': r.get('tags.mlflow.parentRunId'), 'id': r['run_id']}"
        " for _, r in df.iterrows()]))"
    )
    return json.loads(run([sys.executable, "-c", code], root, env).strip().splitlines()[-1])


def stage_commands(root: Path, skip: tuple[str, ...] = ("package",)) -> list[list[str]]:
    """The commands of the project's dvc.yaml stages in file order (the order of the DAG), `foreach` expanded
    over params.yaml's variants."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    variants = yaml.safe_load((root / "params.yaml").read_text())["variants"]
    commands = []
    for name, stage in stages.items():
        if name in skip:
            continue
        if "foreach" in stage:
            commands += [stage["do"]["cmd"].replace("${key}", v) for v in variants]
        else:
            commands.append(stage["cmd"])
    return [shlex.split(c) for c in commands]


def run_in_process(root: Path, env: dict, commands: list[list[str]]) -> str:
    """Run stage commands (`python stages/x.py ...`, `python -m ptqflow ...`) in this process, one after the
    other in `root` with `env`: the same scripts DVC runs, without a process start per stage (torch and
    transformers are imported once). Returns what they printed; a failing stage fails the test with it."""
    saved_env, saved_argv, saved_cwd = dict(os.environ), list(sys.argv), os.getcwd()
    printed = io.StringIO()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(root)
    try:
        for cmd in commands:
            assert cmd[0] == "python", cmd
            module = cmd[2] if cmd[1] == "-m" else None
            sys.argv = [module or cmd[1], *cmd[(3 if module else 2):]]
            try:
                with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                    if module:
                        runpy.run_module(module, run_name="__main__", alter_sys=True)
                    else:
                        runpy.run_path(cmd[1], run_name="__main__")
            except SystemExit as exc:
                assert not exc.code, f"{' '.join(cmd)} exited with {exc.code}:\n{printed.getvalue()[-3000:]}"
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return printed.getvalue()
