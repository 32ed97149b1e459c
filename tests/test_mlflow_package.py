"""MLflow against a real tracking server (`mlflow server`, SQLite backend, 127.0.0.1, a free port): parent and
child runs per pipeline execution of three queued experiments, dataset lineage, the package stage registering a
version per experiment. The server is started and stopped by the fixture. (The registered pyfunc model predicting
like evaluate@, and `ptqflow predict`: test_pipeline.py's shared run.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from .pipeline_project import make_project, run

pytestmark = pytest.mark.slow
MODEL_NAME = "ptqflow-test-classifier"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        assert proc.poll() is None, (root / "server.log").read_text()[-2000:]
    else:
        proc.terminate()
        pytest.fail("mlflow server did not answer /health in 120 s")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def rest(uri: str, path: str, body: dict | None = None) -> dict:
    """MLflow's REST API: POST with a JSON body, or GET."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def search(uri: str, query: str) -> list[dict]:
    exp = rest(uri, "experiments/get-by-name?experiment_name=ptqflow")["experiment"]["experiment_id"]
    return rest(uri, "runs/search", {"experiment_ids": [exp], "filter": query, "max_results": 1000}).get("runs", [])


def tags(r: dict) -> dict:
    return {t["key"]: t["value"] for t in r["data"].get("tags", [])}


class TestQueuedExperiments:  # a class each: pytest-xdist's --dist loadscope runs the two in parallel
    def test_queued_experiments_each_get_a_parent_with_their_children(self, tmp_path, shared, server):
        """Two queued experiments run at once (-j 2) against the server: two parents, each with its own children,
        params, tags and registered version."""
        env = make_project(tmp_path, shared, ["fp32"])
        env["MLFLOW_TRACKING_URI"] = server
        params = yaml.safe_load((tmp_path / "params.yaml").read_text())
        params["data"].update(max_train_samples=160, max_test_samples=60)
        params["package"].update(variant="fp32", registered_model=MODEL_NAME)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run(["git", "add", "-A"], tmp_path, env)
        run(["git", "commit", "-q", "-m", "baseline"], tmp_path, env)
        for lr in ("0.001", "0.002"):
            run(["dvc", "exp", "run", "--queue", "-n", f"lr{lr[-1]}", "-S", f"train.lr={lr}"], tmp_path, env)
        run(["dvc", "exp", "run", "--run-all", "-j", "2"], tmp_path, env)
        shown = json.loads(run(["dvc", "exp", "show", "--json"], tmp_path, env))
        found = {rev["name"] for baseline in shown for exp in baseline.get("experiments") or [] for rev in exp.get("revs") or []
                 if rev.get("name") and "accuracy" in ((rev.get("data") or {}).get("metrics") or {}).get("metrics/eval/fp32.json", {}).get("data", {})}
        assert found == {"lr1", "lr2"}, shown  # DVC lost nothing either
        parents = search(server, "tags.stage = 'pipeline'")
        assert sorted(r["info"]["run_name"] for r in parents) == ["lr1", "lr2"]
        stages = {"prepare", "finetune", "quantize@fp32", "evaluate@fp32", "benchmark", "report", "package"}
        prepared = 0
        for parent in parents:
            pid, name = parent["info"]["run_id"], parent["info"]["run_name"]
            params = {p["key"]: p["value"] for p in parent["data"]["params"]}
            assert params["train.lr"] == f"0.00{name[-1]}" and "data.max_length" in params and "report.alpha" in params
            children = search(server, f"tags.mlflow.parentRunId = '{pid}'")
            # prepare's inputs are the same in every experiment: DVC's run-cache may restore it instead of running it
            assert stages - {"prepare"} <= {c["info"]["run_name"] for c in children} <= stages, name
            assert {c["info"]["status"] for c in children} == {"FINISHED"} and parent["info"]["status"] == "FINISHED"
            for c in children:
                t = tags(c)
                assert t["dvc_experiment"] == name and len(t["git_commit"]) == 40 and t["stage"] == c["info"]["run_name"].split("@")[0]
            ev = next(c for c in children if c["info"]["run_name"] == "evaluate@fp32")
            assert tags(ev)["variant"] == "fp32" and tags(ev)["scheme"] == "fp32"
            assert "report.md" in json.dumps(rest(server, f"artifacts/list?run_id={pid}"))
            prep = next((c for c in children if c["info"]["run_name"] == "prepare"), None)
            if prep is None:
                continue
            prepared += 1
            inputs = prep["inputs"]["dataset_inputs"]
            assert {i["dataset"]["digest"] for i in inputs} and {t["value"] for i in inputs for t in i["tags"] if t["key"] == "mlflow.data.context"} \
                == {"train", "validation", "test"}
        assert prepared >= 1
        per_exp = search(server, "tags.variant = 'fp32' and tags.stage = 'evaluate'")
        assert sorted(tags(r)["dvc_experiment"] for r in per_exp) == ["lr1", "lr2"]
        # the package stage of each registered a version in the server's Model Registry, from its own run
        import urllib.parse

        versions = rest(server, "model-versions/search?filter=" + urllib.parse.quote(f"name='{MODEL_NAME}'"))["model_versions"]
        assert len(versions) == 2 and {v["run_id"] for v in versions} <= {c["info"]["run_id"] for c in search(server, "tags.stage = 'package'")}
        assert {dict((t["key"], t["value"]) for t in v.get("tags", []))["variant"] for v in versions} == {"fp32"}
