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
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf[True]  # YAML 1.1 reads the key `on` as True
    for event in ("push", "pull_request"):
        assert set(triggers[event]["paths"]) == {"params.yaml", "dvc.yaml", "src/**", "stages/**"}
    steps = " ".join(str(s.get("run", "")) for s in wf["jobs"]["repro"]["steps"])
    assert "make setup" in steps and "dvc exp run" in steps and "dvc metrics diff --md" in steps
    assert "GITHUB_STEP_SUMMARY" in steps


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
