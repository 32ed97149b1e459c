"""The GitHub Actions workflow that re-runs the pipeline for users of the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "pipeline.yml"
ACTIONLINT = str(Path(sys.executable).parent / "actionlint")


def test_workflow_passes_actionlint():
    r = subprocess.run([ACTIONLINT, str(WORKFLOW)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope.sha }\n")
    r = subprocess.run([ACTIONLINT, str(broken)], capture_output=True, text=True)
    assert r.returncode != 0


def test_workflow_triggers_on_what_the_pipeline_depends_on_and_diffs_metrics():
    """The pipeline runs once on a change of what it depends on, only what changed (DVC's cache restored, from a
    remote or GitHub's cache), and diffs the metrics against the committed baseline; the cache is saved after."""
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf[True]  # YAML 1.1 reads the key `on` as True
    for event in ("push", "pull_request"):
        assert set(triggers[event]["paths"]) == {"params.yaml", "dvc.yaml", "dvc.lock", "conf/**", "src/**", "stages/**"}
    steps = wf["jobs"]["repro"]["steps"]
    runs = " ".join(str(s.get("run", "")) for s in steps)
    assert "make setup" in runs and runs.count("dvc repro") == 1 and "dvc exp run" not in runs
    assert "dvc metrics diff --md HEAD" in runs and "GITHUB_STEP_SUMMARY" in runs and "ptqflow table" in runs
    assert "dvc pull --run-cache" in runs and "dvc push --run-cache" in runs  # a configured remote
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("actions/cache/restore") for u in uses) and any(u.startswith("actions/cache/save") for u in uses)
    assert all(s["with"]["path"] == ".dvc/cache" for s in steps if s.get("uses", "").startswith("actions/cache"))


def test_baseline_is_committed():
    """dvc.lock and the default run's metric files are in git: a clone shows the study before running anything."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert "dvc.lock" in files and "metrics/comparison.json" in files and "metrics/eval/fp32.json" in files
    import json

    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    assert set(lock["stages"]) >= {"prepare", "finetune", "benchmark", "report", "package"}
    comparison = json.loads((ROOT / "metrics/comparison.json").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert comparison["variant_set"] == params["variant_set"] and set(comparison["variants"]) | set(comparison["skipped"]) == set(params["variants"])
    assert comparison["measured"]["date"] and comparison["measured"]["device"]


def test_make_paper_stops_fast_and_clearly_offline():
    """The report's configuration needs the Hub: offline, `make paper` stops in seconds with one clear line."""
    import os
    import time

    env = {**os.environ, "HF_ENDPOINT": "https://hub.invalid", "HF_HUB_OFFLINE": "0"}  # .invalid never resolves
    start = time.monotonic()
    r = subprocess.run(["make", "-s", "paper"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert time.monotonic() - start < 60
    assert r.returncode != 0
    assert "error: gpt2, fancyzhx/ag_news needs the Hugging Face Hub, which is not reachable" in r.stderr
    assert "dvc exp run" not in r.stdout  # it never got as far as starting the experiment
