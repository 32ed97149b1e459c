"""End to end: `dvc repro` on a throw-away copy of the project with a tiny config."""

from __future__ import annotations

import json

import pytest
import yaml

from .conftest import ROOT
from .pipeline_project import NOISE, SKIPPED, VARIANTS, cpu_skips, make_project, mlflow_runs, run, run_in_process, stage_commands

pytestmark = pytest.mark.slow


def repeated_lines(out: str, most: int = 3) -> dict[str, int]:
    """Console lines printed more than `most` times, progress bars (carriage-return updates, '|...|' bars) and
    DVC's per-stage lines aside."""
    from collections import Counter

    lines = [line.split("\r")[-1].strip() for line in out.splitlines()]
    bars = ("it/s]", "s/it]", "|", "Running stage", "Updating lock file", "Stage ", "Generating lock file")
    counted = Counter(line for line in lines if line and not any(b in line for b in bars))
    return {line: n for line, n in counted.items() if n > most}


@pytest.fixture
def project(e2e_project):
    return e2e_project


class TestOneRepro:
    """The tests sharing one `dvc repro` (conftest.py's session fixture `e2e_project`). A class: pytest-xdist's
    `--dist loadscope` (the Makefile's) runs a class's tests in one worker, so the pipeline runs once."""

    def test_repro_writes_every_metric_report_and_figure(self, project):
        root, env, out = project
        assert "Running stage 'assets'" in out and (root / "data/raw/ag_news/test.csv").is_file()
        assert not [line for line in out.splitlines() if any(n in line for n in NOISE)]  # stages' stderr is in `out`
        assert not repeated_lines(out), repeated_lines(out)  # a console a user reads: no line more than 3 times
        for v in VARIANTS:
            assert f"Running stage 'evaluate@{v}'" in out
            d = json.loads((root / "reports" / "eval" / f"{v}.json").read_text())  # details: not a DVC metric
            assert d["test_rows"] == 120 and "latency" not in d
            assert 0.0 <= d["accuracy"] <= 1.0 and 0.0 <= d["f1_macro"] <= 1.0 and d["size_on_disk"]["bytes"] > 0
            assert sum(map(sum, d["confusion_matrix"]["matrix"])) == 120
            assert set(d["per_class"]) == {"World", "Sports", "Business", "Sci/Tech"}
            assert (root / "plots" / "predictions" / f"{v}.csv").read_text().startswith("actual,predicted")
            m = json.loads((root / "metrics" / "eval" / f"{v}.json").read_text())  # the dozen numbers
            assert m["accuracy"] == pytest.approx(d["accuracy"], abs=1e-6) and m["online"]["p50_ms"] > 0
            assert m["batch"]["rows_per_s"] > 0 and m["fixed"]["speedup"] > 0 and len(m) + 3 <= 14
        assert "Running stage 'benchmark'" in out and "variants timed interleaved" in out
        bench = json.loads((root / "reports/benchmark.json").read_text())
        assert set(v for v, r in bench["variants"].items() if "latency" in r) == set(VARIANTS)
        assert bench["protocol"]["rounds"] == 3 and bench["protocol"]["workloads"] == ["online", "batch", "fixed"]
        assert bench["protocol"]["profiles"]["online"]["padding_share"] == 0.0 and bench["protocol"]["profiles"]["fixed"]["max_length"] == 32
        assert "CUDA" in bench["variants"]["int4_wo_ao"]["skipped"]
        fp32 = json.loads((root / "reports/eval/fp32.json").read_text())
        int8 = json.loads((root / "reports/eval/int8_scratch.json").read_text())
        assert 3.9 <= fp32["size_on_disk"]["bytes"] / int8["size_on_disk"]["bytes"] <= 4.05
        train = json.loads((root / "reports/train.json").read_text())
        assert train["epochs"] and "val_accuracy" in train and train["wall_time_s"] > 0
        assert set(json.loads((root / "metrics/train.json").read_text())) == {"val_accuracy", "wall_time_s", "train_rows", "validation_rows"}
        data = json.loads((root / "reports/data.json").read_text())
        assert data["splits"]["test"]["rows"] == 120
        assert json.loads((root / "metrics/data.json").read_text())["test_rows"] == 120
        report = (root / "reports" / "report.md").read_text()
        assert "Table 1" in report and all(f"per-class metrics, {v}" in report for v in VARIANTS)
        assert "timed interleaved" in report and "Half-precision baseline:" in report
        figures = {p.name for p in (root / "plots" / "figures").glob("*.png")}
        assert figures == {f"confusion_{v}.png" for v in VARIANTS} | {"metrics_comparison.png", "size_latency.png", "pareto.png", "profiles.png"}
        assert "recommended: smallest acceptable" in out and "| variant | accuracy |" not in out  # one line per stage
        table = run(["ptqflow", "table"], root, env).splitlines()
        assert table[0].startswith("variant set: default;") and table[1].startswith("| variant | accuracy |")
        full = json.loads((root / "metrics/comparison.json").read_text())
        comparison = full["variants"]
        halves = [v for v in ("fp16", "bf16") if v in VARIANTS]  # run natively on this CPU (or none: AVX2-only)
        assert set(comparison) == set(VARIANTS) and (full["half_baseline"] in halves if halves else full["half_baseline"] is None)
        assert set(full["skipped"]) == set(SKIPPED) and "CUDA" in full["skipped"]["int4_wo_ao"]
        assert full["recommendation"]["smallest"] in VARIANTS and set(full["recommendation"]["pareto_front"]) <= set(VARIANTS)
        assert "## Recommendation" in report and "## Variants not run on this machine" in report
        for v in SKIPPED:
            assert f"Running stage 'evaluate@{v}'" in out
            why = json.loads((root / "reports" / "eval" / f"{v}.json").read_text())["skipped"]
            assert "CUDA" in why or (v in ("fp16", "bf16") and "is emulated on this CPU" in why)
        dyn = json.loads((root / "reports/eval/int8_dynamic.json").read_text())
        assert dyn["runtime"]["kernel"] == "fbgemm" and dyn["runtime"]["int8_layers"] == 8
        assert comparison["fp32"]["stats"]["agreement"] == 1.0 and comparison["fp32"]["stats"]["mcnemar_p"] == 1.0
        assert comparison["fp32"]["speed_verdict"] == "baseline" and comparison["fp32"]["speedup"] == 1.0
        for v in VARIANTS:
            st = comparison[v]["stats"]
            assert st["delta_ci95_low"] <= st["delta_accuracy"] <= st["delta_ci95_high"]
            lo, hi = comparison[v]["speedup_ci95"]
            assert lo <= comparison[v]["speedup"] <= hi and (comparison[v]["speedup_vs_half"] > 0 if halves else True)
            assert comparison[v]["speed_verdict"] in ("baseline", "faster", "slower", "no measurable difference")
        assert "McNemar exact p" in report and "`online`: speedup vs fp32" in report and "## Speed per traffic profile" in report
        pareto = (root / "plots/pareto.csv").read_text().splitlines()
        assert pareto[0].startswith("variant,accuracy,latency_ms,size_MiB") and len(pareto) == 1 + len(VARIANTS)


    def test_mlflow_has_one_run_per_stage_and_variant(self, project):
        root, env, _ = project
        everything = mlflow_runs(root, env)
        parents = [r for r in everything if r["stage"] == "pipeline"]
        assert len(parents) == 1 and parents[0]["name"].startswith("repro ") and parents[0]["status"] == "FINISHED"
        children = [r for r in everything if r["stage"] != "pipeline"]
        assert {r["parent"] for r in children} == {parents[0]["id"]}
        runs = {r["name"]: r["accuracy"] for r in children}
        expected = {"prepare", "finetune", "benchmark", "report", "package"} | {f"{s}@{v}" for s in ("quantize", "evaluate")
                                                                                  for v in VARIANTS + SKIPPED}
        assert set(runs) == expected
        fp32 = json.loads((root / "reports/eval/fp32.json").read_text())
        assert runs["evaluate@fp32"] == pytest.approx(fp32["accuracy"])


    def test_second_repro_is_up_to_date_and_metrics_show(self, project):
        root, env, _ = project
        assert "Data and pipelines are up to date" in run(["dvc", "repro"], root, env)
        shown = run(["dvc", "metrics", "show", "--json"], root, env)
        assert "metrics/eval/int8_dynamic.json" in shown
        header = run(["dvc", "metrics", "show"], root, env).splitlines()[0].split()
        assert len(header) <= 20, header  # readable: Path + the dozen numbers + rows, validation accuracy, wall time


    def test_a_clone_with_the_cache_pulled_reruns_only_the_changed_variant(self, project, tmp_path):
        """What CI does: the baseline (dvc.lock, metrics/) committed, the cache pushed to a DVC remote (a local
        folder here); in a fresh clone, `dvc pull` restores everything (a clean `dvc status`), one variant's option
        changed, `dvc repro --dry` runs exactly that variant's quantize / evaluate, then benchmark and report (DVC's own
        logic; package follows once their outputs change), and `dvc metrics diff HEAD` compares against the committed
        baseline without running it again."""
        root, env, _ = project
        env = {**env, "PTQFLOW_TRACKING": "0"}
        run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], root, env)
        run(["dvc", "push", "--run-cache"], root, env)
        run(["git", "add", "-A"], root, env)
        run(["git", "commit", "-qm", "baseline"], root, env)
        assert "metrics/eval/fp32.json" in run(["git", "ls-files"], root, env) and "dvc.lock" in run(["git", "ls-files"], root, env)
        clone = tmp_path / "clone"
        run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
        run(["dvc", "pull"], clone, env)
        assert json.loads(run(["dvc", "status", "--json"], clone, env)) == {}  # everything restored, nothing to run
        params = yaml.safe_load((clone / "params.yaml").read_text())
        params["variants"]["int8_dynamic"]["embeddings"] = "keep"
        (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert set(json.loads(run(["dvc", "status", "--json"], clone, env))) == {"quantize@int8_dynamic", "evaluate@int8_dynamic",
                                                                                 "benchmark", "report"}
        out = run(["dvc", "repro", "--dry"], clone, env)  # what DVC would run (the run itself: test time; shown in docs)
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
        # (package runs after them when report's outputs change: a dry run cannot know that yet)
        assert ran == {"quantize@int8_dynamic", "evaluate@int8_dynamic", "benchmark", "report"}, ran
        (clone / "metrics/eval/int8_dynamic.json").write_text(json.dumps({**json.loads((clone / "metrics/eval/int8_dynamic.json").read_text()),
                                                                      "accuracy": 0.123}))
        diff = json.loads(run(["dvc", "metrics", "diff", "--json", "HEAD"], clone, env))  # against the committed baseline
        assert diff["metrics/eval/int8_dynamic.json"]["accuracy"]["new"] == 0.123

    def test_the_model_folders_the_params_name_are_dependencies(self, project):
        """dvc.yaml depends on the folders model.base / model.pretrained name: pointing model.pretrained at another
        local folder re-runs the pipeline from prepare, and so does a changed file in the folder itself."""
        import shutil

        root, env, _ = project
        saved = (root / "params.yaml").read_text()
        params = yaml.safe_load(saved)
        shutil.copytree(root / params["model"]["base"], root / "models" / "other-base")
        try:
            params["model"]["base"] = "models/other-base"
            (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            assert {"prepare", "finetune"} <= set(json.loads(run(["dvc", "status", "--json"], root, env)))
            (root / "params.yaml").write_text(saved)
            assert "prepare" not in set(json.loads(run(["dvc", "status", "--json"], root, env)))
            pretrained = root / params["model"]["pretrained"]
            assert (pretrained / "config.json").is_file()  # assets brought the pretrained encoder (prepare depends on it)
        finally:
            (root / "params.yaml").write_text(saved)
            shutil.rmtree(root / "models" / "other-base")

    def test_forced_rerun_gives_identical_predictions(self, project):
        """Determinism: fine-tuning, quantizing and evaluating again from scratch (dvc.yaml's own stage commands, run
        in this process into a copy of the project) gives the same answers with the same seed."""
        import shutil

        root, env, _ = project
        again = root.parent / "again"
        shutil.copytree(root, again, ignore=shutil.ignore_patterns("models", ".dvc", "mlflow.db*", "plots", "reports"),
                        symlinks=True)
        shutil.copytree(root / "models" / "base", again / "models" / "base")
        variants = ("fp32", "int8_scratch")
        commands = [c for c in stage_commands(again) if c[1] in ("stages/finetune.py",)
                    or (len(c) > 3 and c[1] in ("stages/quantize.py", "stages/evaluate.py") and c[3] in variants)]
        run_in_process(again, {**env, "PTQFLOW_TRACKING": "0"}, commands)
        for v in variants:
            assert (again / "plots" / "predictions" / f"{v}.csv").read_text() == (root / "plots" / "predictions" / f"{v}.csv").read_text()
        assert json.loads((again / "reports/train.json").read_text())["resumed_from_checkpoint"] is False

    def test_package_registers_a_pyfunc_that_predicts_like_evaluate(self, project, capsys):
        """The package stage of the same run: models/recommended/ (the recommended variant, its loader, a model card,
        the profile it was picked for); `ptqflow predict` answers on the package as evaluate@ did; bad input is one
        line and leaves the package as it was. (The registered version, loaded by MLflow: the served test.)"""
        import subprocess
        import sys

        root, env, _ = project
        pkg = root / "models/recommended"
        meta = json.loads((pkg / "package.json").read_text())
        variant = meta["variant"]
        assert variant in VARIANTS and meta["loader"] in ("transformers", "ptqflow", "onnxruntime", "openvino")
        card = (pkg / "README.md").read_text()
        assert "McNemar p" in card and "[95% CI" in card and variant in card and meta["profile"] == "online"
        assert "for the `online` traffic profile" in card and "`batch` (calls of 4)" in card
        from datasets import load_from_disk

        test = load_from_disk(str(root / "data/prepared"))["test"]
        expected = [line.split(",")[1] for line in (root / "plots" / "predictions" / f"{variant}.csv").read_text().splitlines()[1:]]
        # (the registered version loaded by MLflow, no pickles: the served test below starts a server on it)
        from ptqflow.cli import main  # `ptqflow predict`, in this process (no start-up per call)

        capsys.readouterr()
        main(["predict", "--model", str(pkg), test["text"][0]])
        assert capsys.readouterr().out.strip().splitlines()[-1].split("\t")[0] == expected[0]
        src = root / "in.csv"
        src.write_text("id,text\n1,\"" + test["text"][1].replace('"', "'") + "\"\n")
        main(["predict", "--model", str(pkg), "--csv", str(src)])
        assert (root / "in.pred.csv").read_text().splitlines()[1].endswith("," + expected[1])
        (root / "empty.csv").write_text("")
        for args, message in ((["--model", str(pkg), "--csv", str(root / "empty.csv")], "empty CSV"),
                              (["--model", str(root / "nowhere"), "x"], "no packaged model")):
            capsys.readouterr()
            with pytest.raises(SystemExit) as stopped:
                main(["predict", *args])
            err = capsys.readouterr().err  # (in this process other tests' progress-bar settings can add a bar line)
            errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
            assert stopped.value.code == 2 and len(errors) == 1 and message in errors[0], err
        saved = (root / "params.yaml").read_text()
        params = yaml.safe_load(saved)
        params["package"]["variant"] = "int9_magic"
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        try:
            r = subprocess.run([sys.executable, "stages/package.py", "--no-tracking"], cwd=root, env=env, capture_output=True, text=True)
        finally:
            (root / "params.yaml").write_text(saved)
        assert r.returncode == 2 and "package.variant 'int9_magic' is not a variant the report compared" in r.stderr
        assert (pkg / "package.json").is_file()  # the earlier package is left as it was


    def test_the_registered_model_served_answers_good_requests_and_refuses_bad_ones(self, project):
        """`mlflow models serve` of the registered version on a free port: good requests answered as evaluate@ did, every
        malformed request a 4xx with a one-line reason and no traceback (or, for a long text, answered), the server
        answering the next good request correctly after each; a short closed-loop load with no error; then stopped."""
        from ptqflow.serve import LoadPlan, body, labels_of, loadtest, post, probe, served

        root, env, _ = project
        from datasets import load_from_disk

        test = load_from_disk(str(root / "data/prepared"))["test"]
        texts = list(test["text"][:32])
        variant = json.loads((root / "models/recommended/package.json").read_text())["variant"]
        expected = [line.split(",")[1] for line in (root / "plots/predictions" / f"{variant}.csv").read_text().splitlines()[1:]]
        try:
            server_cm = served("models:/ptqflow-classifier/latest", "recommended",
                               env={"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}, log_dir=root / ".ptqflow/serve")
            server = server_cm.__enter__()
        except Exception as exc:  # noqa: BLE001 - only where the server cannot start at all
            pytest.skip(f"MLflow's scoring server did not start here: {exc}")
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        latest = max(client.search_model_versions("name = 'ptqflow-classifier'"), key=lambda v: int(v.version))
        assert latest.tags["variant"] == variant
        try:
            status, answer = post(server.url, body(texts[:8]))  # the registered version, loaded by MLflow: no pickles
            assert status == 200 and labels_of(answer) == expected[:8], answer[:500]
            results = probe(server.url, texts[:2], 256)
            for r in results:
                assert r["good_after"] and not r["traceback_in_body"] and r["status"] < 500, r
                assert r["ok"], r
                assert "\n" not in r["reason"] and r["reason"], r
            by = {r["request"]: r for r in results}
            assert "row 0: text must be a string, got a number (42)" in by["a number where text belongs"]["reason"]
            assert "row 0: text is empty" in by["an empty string"]["reason"]
            assert "at most 256 per request" in by["10000 rows in one request"]["reason"]
            assert by["a 1 MB text"]["status"] == 200 and by["a wrong content type"]["status"] == 415
            record = loadtest([server], texts, LoadPlan(clients=(4,), payloads={"single rows": 1, "batches of 16": 16},
                                                        requests_per_client=2, min_requests=8, max_seconds=20, rounds=1))
            phases = record["results"]["recommended"]
            assert all(r["errors"] == 0 and r["requests"] == 8 for rounds in phases.values() for r in rounds), phases
            assert record["memory"]["recommended"]["before_bytes"] > 0
        finally:
            server_cm.__exit__(None, None, None)
        assert server.process.poll() is not None  # stopped


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_repro_runs_every_default_variant_on_other_families(tmp_path, shared, family):
    """Every stage of dvc.yaml (package aside) with a tiny BERT / Llama config: every default variant is
    quantized and evaluated, or skipped with its reason, then timed and reported. The stage scripts run in this
    process, in dvc.yaml's order (DVC's own wiring is the GPT-2 tests' above): a process start per stage would
    cost this test minutes."""
    from .families import EMBEDDING_TABLES, PROJECTIONS, make_base

    defaults = list(yaml.safe_load((ROOT / "params.yaml").read_text())["variants"])  # the focused default set
    env = make_project(tmp_path, shared, defaults)
    env["PTQFLOW_TRACKING"] = "0"
    make_base(family, shared / "models" / "gpt2", tmp_path / "tiny-base")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["model"].update(base=str(tmp_path / "tiny-base"), overrides={})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run_in_process(tmp_path, env, stage_commands(tmp_path))
    assert "recommended:" in out and out.count("evaluate@") >= len(defaults)
    assert "recompile_limit" not in out  # compiled variants are evaluated at a few bucketed shapes
    comparison = json.loads((tmp_path / "metrics/comparison.json").read_text())
    assert set(comparison["variants"]) | set(comparison["skipped"]) == set(defaults)
    assert set(comparison["skipped"]) == set(cpu_skips(defaults))  # everything else ran on this CPU
    for name in comparison["variants"]:
        m = json.loads((tmp_path / "metrics/eval" / f"{name}.json").read_text())
        assert 0 <= m["accuracy"] <= 1 and m["online"]["p50_ms"] > 0 and m["compression"] > 0
    details = {n: json.loads((tmp_path / "reports/eval" / f"{n}.json").read_text()) for n in comparison["variants"]}
    assert details["int8_dynamic"]["quantization"]["quantized_modules"] == PROJECTIONS[family]
    assert details["int8_dynamic"]["quantization"]["quantized_embeddings"] == EMBEDDING_TABLES[family]
    assert details["int8_bnb"]["quantization"]["quantized_modules"] == PROJECTIONS[family]
    size = details["nf4_bnb_size"]["quantization"]  # the size search: tables at the bits it chose, or kept
    assert size["quantized_embeddings"] == (0 if size["embeddings"] == "keep" else EMBEDDING_TABLES[family])
    assert details["int8_static_cpu"]["quantization"]["quantized_modules"] == PROJECTIONS[family]
    assert details["fp32"]["environment"]["device"] == "cpu"
