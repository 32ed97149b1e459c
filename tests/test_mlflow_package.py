"""MLflow against a real tracking server (`mlflow server`, SQLite backend, 127.0.0.1, a free port): parent and
child runs per pipeline execution, dataset lineage, the package stage, the registered pyfunc model, and
`ptqflow predict`. The server is started and stopped by the fixture."""

from __future__ import annotations

import json
import os
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
        """Three queued experiments at -j 2 against the server: three parents, each with its own children, params, tags."""
        env = make_project(tmp_path, shared, ["fp32", "int8_dynamic"])
        env["MLFLOW_TRACKING_URI"] = server
        params = yaml.safe_load((tmp_path / "params.yaml").read_text())
        params["package"]["registered_model"] = None
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run(["git", "add", "-A"], tmp_path, env)
        run(["git", "commit", "-q", "-m", "baseline"], tmp_path, env)
        for lr in ("0.001", "0.002", "0.003"):
            run(["dvc", "exp", "run", "--queue", "-n", f"lr{lr[-1]}", "-S", f"train.lr={lr}"], tmp_path, env)
        run(["dvc", "exp", "run", "--run-all", "-j", "2"], tmp_path, env)
        shown = json.loads(run(["dvc", "exp", "show", "--json"], tmp_path, env))
        found = {rev["name"] for baseline in shown for exp in baseline.get("experiments") or [] for rev in exp.get("revs") or []
                 if rev.get("name") and "accuracy" in ((rev.get("data") or {}).get("metrics") or {}).get("metrics/eval/fp32.json", {}).get("data", {})}
        assert found == {"lr1", "lr2", "lr3"}, shown  # DVC lost nothing either
        parents = search(server, "tags.stage = 'pipeline'")
        assert sorted(r["info"]["run_name"] for r in parents) == ["lr1", "lr2", "lr3"]
        stages = {"prepare", "finetune", "quantize@fp32", "quantize@int8_dynamic", "evaluate@fp32", "evaluate@int8_dynamic",
                  "benchmark", "report", "package"}
        for parent in parents:
            pid, name = parent["info"]["run_id"], parent["info"]["run_name"]
            params = {p["key"]: p["value"] for p in parent["data"]["params"]}
            assert params["train.lr"] == f"0.00{name[-1]}" and "data.max_length" in params and "report.alpha" in params
            children = search(server, f"tags.mlflow.parentRunId = '{pid}'")
            assert {c["info"]["run_name"] for c in children} == stages, name
            assert {c["info"]["status"] for c in children} == {"FINISHED"} and parent["info"]["status"] == "FINISHED"
            for c in children:
                t = tags(c)
                assert t["dvc_experiment"] == name and len(t["git_commit"]) == 40 and t["stage"] == c["info"]["run_name"].split("@")[0]
            ev = next(c for c in children if c["info"]["run_name"] == "evaluate@int8_dynamic")
            assert tags(ev)["variant"] == "int8_dynamic" and tags(ev)["scheme"] == "int8_dynamic"
            prep = next(c for c in children if c["info"]["run_name"] == "prepare")
            inputs = prep["inputs"]["dataset_inputs"]
            assert {i["dataset"]["digest"] for i in inputs} and {t["value"] for i in inputs for t in i["tags"] if t["key"] == "mlflow.data.context"} \
                == {"train", "validation", "test"}
            assert "report.md" in json.dumps(rest(server, f"artifacts/list?run_id={pid}"))
        per_exp = search(server, "tags.variant = 'int8_dynamic'")
        assert sorted(tags(r)["dvc_experiment"] for r in per_exp) == ["lr1", "lr2", "lr3"]


class TestPackage:  # a class each: pytest-xdist's --dist loadscope runs the two in parallel
    def test_package_registers_a_pyfunc_that_predicts_like_evaluate(self, tmp_path, shared, server):
        """`dvc repro` with the server: models/recommended/, a registered version loaded without pickles, the same
        labels as evaluate on 100 test rows; `ptqflow predict` answers on the package; bad input is one line."""
        env = make_project(tmp_path, shared, ["fp32", "bf16", "ort_int8_dynamic"])
        env["MLFLOW_TRACKING_URI"] = server
        params = yaml.safe_load((tmp_path / "params.yaml").read_text())
        params["data"]["max_test_samples"] = 100
        params["package"].update(variant="ort_int8_dynamic", registered_model=MODEL_NAME)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out = run(["dvc", "repro"], tmp_path, env)
        assert f"registered {MODEL_NAME} version" in out
        pkg = tmp_path / "models/recommended"
        meta = json.loads((pkg / "package.json").read_text())
        assert meta["variant"] == "ort_int8_dynamic" and meta["loader"] == "onnxruntime"
        card = (pkg / "README.md").read_text()
        assert "McNemar p" in card and "[95% CI" in card and "ort_int8_dynamic" in card
        versions = rest(server, "registered-models/get?name=" + MODEL_NAME)["registered_model"]["latest_versions"]
        version = versions[-1]
        vt = {t["key"]: t["value"] for t in version.get("tags", [])}
        assert vt["variant"] == "ort_int8_dynamic" and vt["source_run"] == version["run_id"]

        from datasets import load_from_disk

        test = load_from_disk(str(tmp_path / "data/prepared"))["test"]
        expected = [line.split(",")[1] for line in (tmp_path / "plots/predictions/ort_int8_dynamic.csv").read_text().splitlines()[1:]]
        code = (
            "import json, sys, mlflow, pandas as pd\n"
            f"mlflow.set_tracking_uri({server!r})\n"
            f"m = mlflow.pyfunc.load_model('models:/{MODEL_NAME}/{version['version']}')\n"
            "texts = json.loads(sys.stdin.read())\n"
            "print(json.dumps(list(m.predict(pd.DataFrame({'text': texts})))))\n"
        )
        loaded = subprocess.run([sys.executable, "-c", code], input=json.dumps(list(test["text"][:100])), capture_output=True,
                                text=True, env=env, cwd=tmp_path)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        assert json.loads(loaded.stdout.strip().splitlines()[-1]) == expected[:100]

        said = run(["ptqflow", "predict", "--model", str(pkg), test["text"][0]], tmp_path, env)
        assert said.strip().splitlines()[-1].split("\t")[0] == expected[0]
        src = tmp_path / "in.csv"
        src.write_text("id,text\n1,\"" + test["text"][1].replace('"', "'") + "\"\n")
        run(["ptqflow", "predict", "--model", str(pkg), "--csv", str(src)], tmp_path, env)
        assert (tmp_path / "in.pred.csv").read_text().splitlines()[1].endswith("," + expected[1])

        for args, message in ((["--csv", str(tmp_path / "empty.csv")], "empty CSV"),
                              (["--model", str(tmp_path / "nowhere"), "x"], "no packaged model")):
            if "empty" in str(args):
                (tmp_path / "empty.csv").write_text("")
            r = subprocess.run(["ptqflow", "predict", *(args if "--model" in args else ["--model", str(pkg), *args])],
                               cwd=tmp_path, env=env, capture_output=True, text=True)
            assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        params["package"]["variant"] = "int9_magic"
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        r = subprocess.run([sys.executable, "stages/package.py", "--no-tracking"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 2 and "package.variant 'int9_magic' is not a variant the report compared" in r.stderr
        assert (pkg / "package.json").is_file()  # the earlier package is left as it was
