"""MLflow store location, `ptqflow assets`, and `--help` on every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ptqflow import assets
from ptqflow.errors import PtqflowError
from ptqflow.tracking import flatten, project_root, tracking_uri

from .conftest import ROOT


def test_store_resolves_to_the_project_from_a_dvc_temp_experiment(tmp_path, monkeypatch):
    exp = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpabc"
    exp.mkdir(parents=True)
    assert project_root(exp) == (tmp_path / "proj").resolve()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(exp)
    assert tracking_uri() == f"sqlite:///{(tmp_path / 'proj').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////x/y.db")
    assert tracking_uri() == "sqlite:////x/y.db"


def test_flatten_keeps_numeric_leaves():
    assert flatten({"a": 1, "b": {"c": 2.5, "d": "s", "e": True}, "f": [1]}) == {"a": 1.0, "b.c": 2.5}


def test_assets_copy_from_the_mirror(tmp_path, shared):
    models = (assets.ModelAsset("gpt2", "model", weights=False),)
    lines = assets.fetch_assets(shared, tmp_path / "data", models, root=tmp_path)
    assert all("copied from" in line for line in lines)
    assert (tmp_path / "data" / "test.csv").read_bytes() == (shared / "data/ag_news/test.csv").read_bytes()
    assert (tmp_path / "model" / "tokenizer.json").is_file() and (tmp_path / "model" / "config.json").is_file()


def test_assets_take_a_pretrained_folder_with_its_weights_from_the_mirror(tmp_path):
    """A mirror's models/<name>/ with weights is copied whole; asked for weights it lacks, the Hub is needed."""
    mirror = tmp_path / "mirror"
    (mirror / "models" / "tiny-bert").mkdir(parents=True)
    for name, text in (("config.json", "{}"), ("vocab.txt", "[PAD]\n"), ("model.safetensors", "w"), ("LICENSE", "x")):
        (mirror / "models" / "tiny-bert" / name).write_text(text)
    line = assets.fetch_model(assets.parse_model_asset("someone/tiny-bert=models/base/tiny-bert"), mirror, tmp_path)
    assert "weights, tokenizer and config copied from" in line
    assert sorted(p.name for p in (tmp_path / "models/base/tiny-bert").iterdir()) == ["LICENSE", "config.json",
                                                                                        "model.safetensors", "vocab.txt"]
    (mirror / "models" / "tiny-bert" / "model.safetensors").unlink()
    with pytest.raises(PtqflowError, match="has no weights"):
        assets.fetch_model(assets.ModelAsset("someone/tiny-bert", "other", weights=True), mirror, tmp_path)
    with pytest.raises(PtqflowError, match="expected HUB_ID=FOLDER"):
        assets.parse_model_asset("bert-base-uncased")


def test_assets_offline_without_mirror_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(PtqflowError, match="needs the Hugging Face Hub, which is not reachable") as err:
        assets.fetch_assets(tmp_path / "no-mirror", tmp_path / "data", root=tmp_path)
    assert "--mirror" in str(err.value)
    assert not (tmp_path / "data" / "train.csv").exists()


def test_cli_reports_errors_in_one_line_and_exit_2(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent), "HF_HUB_OFFLINE": "1", "PTQFLOW_TRACKING": "0"}
    r = subprocess.run([sys.executable, "-m", "ptqflow", "assets", "--mirror", str(tmp_path / "none"),
                        "--data-dir", str(tmp_path / "d"), "--model-dir", str(tmp_path / "m")],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: AG News") and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "stages").glob("*.py")))
def test_every_stage_has_help(script):
    r = subprocess.run([sys.executable, str(ROOT / "stages" / script), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--params" in r.stdout


def test_ptqflow_has_help():
    for args in (["--help"], ["assets", "--help"], ["table", "--help"]):
        r = subprocess.run([sys.executable, "-m", "ptqflow", *args], capture_output=True, text=True)
        assert r.returncode == 0 and "usage:" in r.stdout


def test_paper_config_fails_fast_when_the_hub_is_unreachable(tmp_path):
    import time

    env = {"PATH": str(Path(sys.executable).parent), "HF_ENDPOINT": "https://hub.invalid"}  # never resolves
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "ptqflow", "hub-check", "gpt2"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert time.monotonic() - start < 20
    assert r.returncode == 2
    assert "needs the Hugging Face Hub, which is not reachable" in r.stderr and "make run" in r.stderr


@pytest.mark.slow
def test_parallel_stages_lose_no_mlflow_run(tmp_path):
    """Four processes log at once into one SQLite store (as `dvc exp run -j N` does), spooling their runs and then
    flushing the spool at the same time: every run lands exactly once, under one parent (the same execution:
    same commit, same params), which is created once."""
    import json

    script = (
        "import sys; from ptqflow.tracking import flush, stage_run\n"
        "for i in range(3):\n"
        "    with stage_run(f'evaluate@w{sys.argv[1]}-{i}') as run:\n"
        "        run.log_params({'worker': sys.argv[1]}); run.log_metrics({'accuracy': 0.5, 'x': {'y': i}})\n"
        "flush()\n"
    )
    env = {**__import__("os").environ, "PTQFLOW_TRACKING": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
             for w in range(4)]
    errors = [p.communicate()[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    code = ("import mlflow, json; mlflow.set_tracking_uri('sqlite:///" + str(tmp_path) + "/mlflow.db');"
            "df = mlflow.search_runs(experiment_names=['ptqflow']); parents = df[df['tags.stage'] == 'pipeline'];"
            "df = df[df['tags.stage'] != 'pipeline']; assert len(parents) == 1, parents;"
            "assert set(df['tags.mlflow.parentRunId']) == set(parents['run_id']);"
            "print(json.dumps(sorted(df['tags.mlflow.runName'])), sorted(set(df['status'])), df['metrics.x.y'].sum())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]
    names = json.loads(out.split("] ")[0] + "]")
    assert names == sorted(f"evaluate@w{w}-{i}" for w in range(4) for i in range(3))
    assert "['FINISHED']" in out


def test_a_failed_stage_is_recorded_as_failed(tmp_path, monkeypatch):
    from ptqflow.tracking import stage_run

    monkeypatch.setenv("PTQFLOW_TRACKING", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(PtqflowError):
        with stage_run("finetune") as run:
            run.log_params({"lr": 0.1})
            raise PtqflowError("bad lr")
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    df = mlflow.search_runs(experiment_names=["ptqflow"])
    child, parent = df[df["tags.stage"] == "finetune"], df[df["tags.stage"] == "pipeline"]
    assert list(child["status"]) == ["FAILED"] and "bad lr" in child["tags.error"].iloc[0]
    assert list(parent["status"]) == ["FAILED"] and child["tags.mlflow.parentRunId"].iloc[0] == parent["run_id"].iloc[0]


def test_a_killed_stage_ends_its_run_and_the_parent_as_killed_and_a_resumed_run_reopens_it(tmp_path, monkeypatch):
    """Ctrl-C or a kill (SIGTERM, turned into KeyboardInterrupt inside the stage) during `dvc repro`: the stage's run
    and the execution's parent end KILLED (not left "running" in `mlflow ui`); the next `dvc repro`'s first stage
    puts the parent back to RUNNING, and the report stage finishes it. The experiment opens on the runs table."""
    import os
    import signal

    import mlflow

    from ptqflow.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, flush, stage_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PTQFLOW_TRACKING", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(KeyboardInterrupt):
        with stage_run("finetune"):
            os.kill(os.getpid(), signal.SIGTERM)  # a kill of the stage's process
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the stage's handler is gone after it
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    status = lambda stage: list(mlflow.search_runs(experiment_names=["ptqflow"]).query(f"`tags.stage` == '{stage}'")["status"])  # noqa: E731
    assert status("finetune") == ["KILLED"] and status("pipeline") == ["KILLED"]
    assert mlflow.get_experiment_by_name("ptqflow").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    with stage_run("finetune"):  # spooled (under the project root: tmp_path here), written by flush()
        pass
    flush()
    assert status("pipeline") == ["RUNNING"]
    with stage_run("report"):
        pass
    assert status("pipeline") == ["FINISHED"]


def test_a_finished_stage_spools_its_run_and_a_detached_flush_writes_it(tmp_path):
    """No MLflow import in the stage: the run waits in the spool with a copy of its artifact, and the detached
    process the stage started writes it (once) a moment later; a later edit of the file does not change it."""
    import json
    import time

    (tmp_path / "details.json").write_text('{"v": 1}')
    script = ("import sys; from ptqflow.tracking import stage_run\n"
              "with stage_run('evaluate@spooled') as run:\n"
              "    run.log_metrics({'accuracy': 0.25}); run.log_artifact('details.json')\n"
              "print('mlflow' in sys.modules)\n")
    env = {**__import__("os").environ, "PTQFLOW_TRACKING": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "PTQFLOW_FLUSH_DELAY_S": "3"}
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    spooled = list((tmp_path / ".ptqflow/mlflow-spool").glob("*.json"))
    assert len(spooled) == 1 and json.loads(spooled[0].read_text())["metrics"]["accuracy"] == 0.25
    (tmp_path / "details.json").write_text('{"v": 2}')
    deadline = time.time() + 120
    while list((tmp_path / ".ptqflow/mlflow-spool").glob("*.json")) and time.time() < deadline:
        time.sleep(0.5)
    code = ("import mlflow, json; mlflow.set_tracking_uri('sqlite:///" + str(tmp_path) + "/mlflow.db');"
            "df = mlflow.search_runs(experiment_names=['ptqflow']); df = df[df['tags.stage'] == 'evaluate'];"
            "p = mlflow.artifacts.download_artifacts(run_id=df['run_id'].iloc[0], artifact_path='details.json');"
            "print(json.dumps([len(df), float(df['metrics.accuracy'].iloc[0]), open(p).read()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [1, 0.25, '{"v": 1}'], out.stderr[-2000:]


def test_any_name_becomes_a_valid_mlflow_name():
    from mlflow.utils.validation import _validate_metric_name

    from ptqflow.tracking import mlflow_key

    odd = ["formats.?.projections", "per_class.Sci/Tech.f1", "a//b", "/lead", "x/./y", "..", "runtime.layers.FullyConnected u8",
           "名前.ü", "k" * 400, "", "trailing/"]
    for name in odd:
        key = mlflow_key(name)
        _validate_metric_name(key)  # raises MlflowException on a name MLflow refuses
        assert len(key) <= 250
    assert mlflow_key("per_class.Sci/Tech.f1") == "per_class.Sci/Tech.f1"  # valid names are kept as they are
    assert mlflow_key("k" * 400) != mlflow_key("k" * 399 + "j")


def test_a_runtime_record_with_odd_names_is_tracked_and_a_failing_store_only_warns(tmp_path, monkeypatch, capsys):
    """A fake runtime record (a format the code could not name, a class name with a slash, a key over 250
    characters, two keys that become one) is written to a real MLflow store under valid names; then, with the store
    failing, the stage still finishes and says so in one warning line."""
    import mlflow

    from ptqflow import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PTQFLOW_TRACKING", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    record = {"formats": {"?": {"projections": 4}, "u4": {"projections": 12}}, "per_class": {"Sci/Tech": {"f1": 0.5}},
              "x" * 300: 1, "a?b": 2, "a!b": 3}
    with tracking.stage_run("report") as run:  # report: written at once, not spooled
        run.log_metrics(record)
        run.log_params({"weird key?": "v", "model": {"label_map": {"science/technology ": "Sci/Tech"}}})
        run.set_tags({"what?": "x"})
    found = mlflow.search_runs(experiment_names=["ptqflow"], filter_string="tags.stage = 'report'")
    metrics = {c[len("metrics."):] for c in found.columns if c.startswith("metrics.")}
    assert {"formats._.projections", "formats.u4.projections", "per_class.Sci/Tech.f1", "a_b"} <= metrics
    assert len([m for m in metrics if m.startswith("a_b")]) == 2 and any(m.startswith("x" * 200) for m in metrics)
    assert "params.weird key_" in found.columns and "tags.what_" in found.columns
    capsys.readouterr()

    def broken(*args, **kwargs):
        raise RuntimeError("the store is gone\nsecond line")

    monkeypatch.setattr(tracking, "_write_record", broken)
    with tracking.stage_run("package") as run:
        run.log_metrics({"ok": 1})
        done = True
    err = capsys.readouterr().err
    assert done and err.count("warning:") == 1 and "stage package was not written (RuntimeError: the store is gone)" in err


def test_ui_prints_the_address_of_the_runs_table(tmp_path, monkeypatch, capsys):
    """MLflow 3 opens on its GenAI home: `ptqflow ui` says where the ptqflow experiment's runs table is."""
    import mlflow

    from ptqflow.cli import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment("ptqflow").experiment_id
    main(["ui", "--print-only", "--port", "5123"])
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:5123/#/experiments/{experiment}/runs" in out and "Model training" in out
