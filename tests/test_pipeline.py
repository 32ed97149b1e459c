"""End to end: `dvc repro` on a throw-away copy of the project with a tiny config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

pytestmark = pytest.mark.slow

VARIANTS = ["fp32", "fp16", "bf16", "int8_scratch", "int8_bnb", "nf4_bnb", "int8_dynamic", "nf4_bnb_emb4"]
SKIPPED = ["int4_wo_ao"]  # CUDA only: on this CPU its stages run and say why it was not quantized or evaluated


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
    params["model"]["overrides"] = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 32}  # NF4 on CPU: widths % 64
    params["train"].update(epochs=1, batch_size=16, eval_batch_size=64)
    params["eval"].update(batch_size=64, latency={"batch_size": 4, "warmup": 1, "iters": 3, "threads": None})
    params["variants"] = {v: params["variants"][v] for v in variants}
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
        "print(json.dumps([{'name': r['tags.mlflow.runName'], 'status': r['status'], 'accuracy': r.get('metrics.accuracy')}"
        " for _, r in df.iterrows()]))"
    )
    return json.loads(run([sys.executable, "-c", code], root, env).strip().splitlines()[-1])


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared):
    root = tmp_path_factory.mktemp("project")
    env = make_project(root, shared, VARIANTS + SKIPPED)
    out = run(["dvc", "repro"], root, env)
    return root, env, out


def test_repro_writes_every_metric_report_and_figure(project):
    root, _, out = project
    assert "Running stage 'assets'" in out and (root / "data/raw/ag_news/test.csv").is_file()
    for v in VARIANTS:
        assert f"Running stage 'evaluate@{v}'" in out
        m = json.loads((root / "metrics" / "eval" / f"{v}.json").read_text())
        assert m["test_rows"] == 120
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["f1_macro"] <= 1.0
        assert m["size_on_disk"]["bytes"] > 0 and m["latency"]["median_ms"] > 0
        assert sum(map(sum, m["confusion_matrix"]["matrix"])) == 120
        assert set(m["per_class"]) == {"World", "Sports", "Business", "Sci/Tech"}
        assert (root / "plots" / "predictions" / f"{v}.csv").read_text().startswith("actual,predicted")
    fp32 = json.loads((root / "metrics/eval/fp32.json").read_text())
    int8 = json.loads((root / "metrics/eval/int8_scratch.json").read_text())
    assert 3.9 <= fp32["size_on_disk"]["bytes"] / int8["size_on_disk"]["bytes"] <= 4.05
    train = json.loads((root / "metrics/train.json").read_text())
    assert train["epochs"] and "val_accuracy" in train and train["wall_time_s"] > 0
    data = json.loads((root / "metrics/data.json").read_text())
    assert data["splits"]["test"]["rows"] == 120
    report = (root / "reports" / "report.md").read_text()
    assert "Table 1" in report and all(f"per-class metrics, {v}" in report for v in VARIANTS)
    figures = {p.name for p in (root / "plots" / "figures").glob("*.png")}
    assert figures == {f"confusion_{v}.png" for v in VARIANTS} | {"metrics_comparison.png", "size_latency.png", "pareto.png"}
    assert "| variant | accuracy |" in out and "recommended: smallest acceptable" in out
    full = json.loads((root / "metrics/comparison.json").read_text())
    comparison = full["variants"]
    assert set(comparison) == set(VARIANTS)
    assert set(full["skipped"]) == set(SKIPPED) and "CUDA" in full["skipped"]["int4_wo_ao"]
    assert full["recommendation"]["smallest"] in VARIANTS and set(full["recommendation"]["pareto_front"]) <= set(VARIANTS)
    assert "## Recommendation" in report and "## Variants not run on this machine" in report
    for v in SKIPPED:
        assert f"Running stage 'evaluate@{v}'" in out
        assert "CUDA" in json.loads((root / "metrics" / "eval" / f"{v}.json").read_text())["skipped"]
    dyn = json.loads((root / "metrics/eval/int8_dynamic.json").read_text())
    assert dyn["runtime"]["kernel"] == "fbgemm" and dyn["runtime"]["int8_layers"] == 8
    emb4 = json.loads((root / "metrics/eval/nf4_bnb_emb4.json").read_text())
    assert fp32["size_on_disk"]["bytes"] / emb4["size_on_disk"]["bytes"] > 5  # the whole model, embeddings included
    assert comparison["fp32"]["stats"]["agreement"] == 1.0 and comparison["fp32"]["stats"]["mcnemar_p"] == 1.0
    for v in VARIANTS:
        st = comparison[v]["stats"]
        assert st["delta_ci95_low"] <= st["delta_accuracy"] <= st["delta_ci95_high"]
        assert comparison[v]["speedup_vs_half"] > 0
    assert "McNemar exact p" in report and "Speedup vs half precision" in report


def test_mlflow_has_one_run_per_stage_and_variant(project):
    root, env, _ = project
    runs = {r["name"]: r["accuracy"] for r in mlflow_runs(root, env)}
    expected = {"prepare", "finetune", "report"} | {f"{s}@{v}" for s in ("quantize", "evaluate") for v in VARIANTS + SKIPPED}
    assert set(runs) == expected
    fp32 = json.loads((root / "metrics/eval/fp32.json").read_text())
    assert runs["evaluate@fp32"] == pytest.approx(fp32["accuracy"])


def test_second_repro_is_up_to_date_and_metrics_show(project):
    root, env, _ = project
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], root, env)
    shown = run(["dvc", "metrics", "show", "--json"], root, env)
    assert "metrics/eval/nf4_bnb.json" in shown


def test_changing_one_variant_reruns_only_that_variant(project):
    root, env, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["variants"]["int8_bnb"]["llm_int8_threshold"] = 0.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status", "--json"], root, env)
    changed = set(json.loads(status))
    assert changed == {"quantize@int8_bnb", "evaluate@int8_bnb", "report"}


def test_forced_rerun_gives_identical_predictions(project):
    """Determinism: `dvc repro --force` retrains and re-evaluates from scratch, with the same seed, the same answers."""
    root, env, _ = project
    before = {v: (root / "plots" / "predictions" / f"{v}.csv").read_text() for v in ("fp32", "int8_scratch")}
    acc = json.loads((root / "metrics/eval/fp32.json").read_text())["accuracy"]
    out = run(["dvc", "repro", "--force"], root, env)
    assert "Running stage 'finetune'" in out
    assert {v: (root / "plots" / "predictions" / f"{v}.csv").read_text() for v in before} == before
    assert json.loads((root / "metrics/eval/fp32.json").read_text())["accuracy"] == acc
    assert json.loads((root / "metrics/train.json").read_text())["resumed_from_checkpoint"] is False

def test_queued_experiments_run_in_parallel_and_lose_nothing(tmp_path, shared):
    """`dvc exp run --queue` x3, then `--run-all -j 2`: all finish, `dvc exp show` has their metrics, MLflow every run."""
    env = make_project(tmp_path, shared, ["fp32", "int8_scratch"])
    run(["git", "add", "-A"], tmp_path, env)
    run(["git", "commit", "-q", "-m", "baseline"], tmp_path, env)
    for seed in (1, 2, 3):
        run(["dvc", "exp", "run", "--queue", "-n", f"seed{seed}", "-S", f"train.seed={seed}"], tmp_path, env)
    run(["dvc", "exp", "run", "--run-all", "-j", "2"], tmp_path, env)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], tmp_path, env))
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                metrics = (data.get("metrics") or {}).get("metrics/eval/fp32.json", {}).get("data", {})
                if rev.get("name") and "accuracy" in metrics:
                    found[rev["name"]] = metrics["accuracy"]
    assert set(found) == {"seed1", "seed2", "seed3"}, shown
    runs = mlflow_runs(tmp_path, env)
    assert sum(r["name"] == "finetune" for r in runs) == 3
    assert sum(r["name"] == "evaluate@int8_scratch" for r in runs) == 3
    assert {r["status"] for r in runs} == {"FINISHED"}
