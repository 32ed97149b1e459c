"""The Pareto front and the recommendation follow the numbers: constructed metrics and timings, changed, change the answer."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ptqflow.config import ReportParams
from ptqflow.pareto import pareto_front
from ptqflow.comparison import recommend, summary_rows
from ptqflow.report import build_report
from ptqflow.sizes import size_record

from .speed_fixtures import fake_bench


def _metrics(name: str, size: int, acc: float) -> dict:
    return {
        "variant": name, "scheme": "x", "accuracy": acc, "precision_macro": acc, "recall_macro": acc, "f1_macro": acc,
        "size_on_disk": size_record(size), "memory_footprint": size_record(size), "runtime_dtype": "x",
    }


def _stats(p: float) -> dict:
    return {"mcnemar_p": p, "delta_accuracy": 0.0, "delta_ci95_low": 0.0, "delta_ci95_high": 0.0, "agreement": 1.0,
            "verdict": "significant change" if p < 0.05 else "no significant change"}


#           name      bytes        ms    accuracy  McNemar p
TABLE = [("fp32", 400_000_000, 40.0, 0.900, 1.0),
         ("small", 60_000_000, 50.0, 0.897, 0.40),   # smallest; drop 0.3 pts not significant
         ("fast", 200_000_000, 10.0, 0.898, 0.01),   # fastest; significant, but 0.2 pts <= 0.5 pts
         ("lossy", 30_000_000, 8.0, 0.850, 1e-9),    # smaller and faster still, but loses 5 points
         ("worse", 250_000_000, 45.0, 0.880, 1e-4)]  # dominated by `fast`


def _rows(table=TABLE, params=ReportParams(), noise=0.0):
    metrics = {n: _metrics(n, b, a) for n, b, _, a, _ in table}
    bench = fake_bench({n: ms for n, _, ms, _, _ in table}, noise=noise)
    return summary_rows(metrics, params, bench, {n: _stats(p) for n, _, _, _, p in table})


def test_recommends_the_smallest_then_the_fastest_acceptable_variant():
    rec = recommend(_rows(), ReportParams(max_accuracy_drop=0.005))
    assert rec["smallest"] == "small" and rec["fastest"] == "fast"
    assert rec["acceptable"] == ["fp32", "small", "fast"]
    assert "not significant" in rec["verdicts"]["small"]["why"]
    assert "within report.max_accuracy_drop" in rec["verdicts"]["fast"]["why"]
    assert not rec["verdicts"]["lossy"]["acceptable"] and not rec["verdicts"]["worse"]["acceptable"]


def test_pareto_front_drops_dominated_variants_only():
    assert pareto_front(_rows()) == ["fp32", "small", "fast", "lossy"]


def test_changing_the_numbers_changes_the_recommendation():
    # a looser threshold admits `lossy`, which is both smallest and fastest
    rec = recommend(_rows(), ReportParams(max_accuracy_drop=0.06))
    assert rec["smallest"] == "lossy" and rec["fastest"] == "lossy"
    # a stricter threshold turns `fast` away (its drop is significant): the fastest is then fp32
    rec = recommend(_rows(), ReportParams(max_accuracy_drop=0.001))
    assert rec["fastest"] == "fp32" and rec["smallest"] == "small"
    # `small` becomes significantly worse: the smallest acceptable is then `fast`
    table = [t if t[0] != "small" else ("small", 60_000_000, 50.0, 0.890, 0.001) for t in TABLE]
    rec = recommend(_rows(table), ReportParams(max_accuracy_drop=0.005))
    assert rec["smallest"] == "fast"
    # a faster `worse` (and no longer significantly worse) takes `fastest`
    table = [t if t[0] != "worse" else ("worse", 250_000_000, 5.0, 0.899, 0.8) for t in TABLE]
    assert recommend(_rows(table), ReportParams())["fastest"] == "worse"


def test_the_recommendation_follows_the_timings():
    # `small` measured 8x faster than fp32: it becomes the fastest acceptable variant as well as the smallest
    table = [t if t[0] != "small" else ("small", 60_000_000, 5.0, 0.897, 0.40) for t in TABLE]
    rec = recommend(_rows(table), ReportParams())
    assert rec["fastest"] == "small" and rec["fastest_is_measurably_faster"]
    # `fast` no longer measurably faster (noisy timings around fp32's): it counts as equal in speed to fp32
    table = [t if t[0] != "fast" else ("fast", 200_000_000, 40.0, 0.898, 0.01) for t in TABLE]
    rows = _rows(table, noise=0.05)
    by = {r["variant"]: r for r in rows}
    assert by["fast"]["speed_verdict"] == "no measurable difference" and by["fast"]["effective_speedup"] == 1.0
    rec = recommend(rows, ReportParams())
    # equal in speed to fp32 and smaller: `fast` is still named, but not as measurably faster
    assert rec["fastest"] == "fast" and not rec["fastest_is_measurably_faster"]


def test_only_the_baseline_acceptable_recommends_the_baseline():
    table = [TABLE[0], ("lossy", 30_000_000, 8.0, 0.850, 1e-9)]
    rec = recommend(_rows(table), ReportParams())
    assert rec["smallest"] == rec["fastest"] == "fp32"


def test_report_has_the_pareto_plot_the_recommendation_and_the_skipped_variants(tmp_path):
    details_dir, pred_dir = tmp_path / "details", tmp_path / "pred"
    details_dir.mkdir()
    pred_dir.mkdir()
    actual = ["a", "b"] * 50
    for name, size, flips in [("fp32", 4_000_000, 0), ("q8", 1_000_000, 1), ("q4", 500_000, 30)]:
        predicted = [("b" if x == "a" else "a") if i < flips else x for i, x in enumerate(actual)]
        m = _metrics(name, size, sum(p == a for p, a in zip(predicted, actual)) / len(actual))
        m.update(per_class={}, confusion_matrix={"labels": ["a", "b"], "matrix": [[50, 0], [0, 50]]}, test_rows=100,
                 environment={"device_name": "cpu", "torch": "t", "transformers": "t", "bitsandbytes": None})
        (details_dir / f"{name}.json").write_text(json.dumps(m))
        pd.DataFrame({"actual": actual, "predicted": predicted}).to_csv(pred_dir / f"{name}.csv", index=False)
    q8 = json.loads((details_dir / "q8.json").read_text())  # as int8_static with `sensitivity` and `budget` records them
    table = {f"body.layers.{i}.{kind}": {"kl": 0.1 * (i + 1) * (2 if kind == "fc" else 1), "nmse": 0.01, "delta_accuracy": 0.0,
                                         "layer": str(i), "type": kind} for i in range(2) for kind in ("qkv", "fc")}
    q8["quantization"] = {"sensitivity": {"rows": 64, "by_projection": table}, "mac_share_8bit": 0.75,
                          "input_absmax": {"body.layers.1.fc": 40.0, "body.layers.0.qkv": 4.0},
                          "budget": {"kept": ["body.layers.1.fc"], "k": 1, "validation_drop": 0.002, "max_drop": 0.005,
                                     "rows": 100, "tried": [{"kept": 0, "drop": 0.02}, {"kept": 1, "drop": 0.002}]}}
    (details_dir / "q8.json").write_text(json.dumps(q8))
    (details_dir / "gpu_only.json").write_text(json.dumps({"variant": "gpu_only", "scheme": "torchao", "skipped": "needs CUDA"}))
    bench = tmp_path / "benchmark.json"
    bench.write_text(json.dumps(fake_bench({"fp32": 10.0, "q8": 8.0, "q4": 9.0})))
    params = ReportParams(half_baseline="none")
    out = {k: tmp_path / k for k in ("report.md", "figures", "comparison.json", "metrics", "pareto.csv")}
    rows = build_report(["fp32", "q8", "q4", "gpu_only"], details_dir, pred_dir, bench, params, out["report.md"],
                        out["figures"], out["comparison.json"], out["metrics"], out["pareto.csv"])
    assert [r["variant"] for r in rows] == ["fp32", "q8", "q4"]
    text = out["report.md"].read_text()
    assert "## Recommendation" in text and "Smallest acceptable variant: `q8`" in text
    assert "## Variants not run on this machine" in text and "`gpu_only`: needs CUDA" in text
    assert "timed interleaved" in text and "1.25x [1.25, 1.25]" in text
    assert (out["figures"] / "pareto.png").stat().st_size > 10_000
    assert "## Sensitivity: which projections quantization hurts" in text and "| `body.layers.1.fc` | 1 | 0.4 |" in text
    assert "1 projection(s) kept in float (`body.layers.1.fc`)" in text and "75.0% of the body's" in text
    assert (out["figures"] / "sensitivity_q8.png").stat().st_size > 5_000
    assert "`body.layers.1.fc` 40 (" in text  # the activation ranges: where the outliers are
    assert "Holm" in text and "McNemar p, Holm-adjusted" in text
    comparison = json.loads(out["comparison.json"].read_text())
    assert comparison["recommendation"]["smallest"] == "q8" and comparison["skipped"] == {"gpu_only": "needs CUDA"}
    assert comparison["recommendation"]["fastest"] == "q8" and comparison["recommendation"]["fastest_is_measurably_faster"]
    assert not comparison["recommendation"]["verdicts"]["q4"]["acceptable"]  # 30 of 100 flipped: p < 0.05, 30 pts
    q8 = comparison["variants"]["q8"]
    assert q8["speedup"] == 1.25 and q8["speedup_ci95"] == [1.25, 1.25] and q8["speed_verdict"] == "faster"
    metrics = {p.stem: json.loads(p.read_text()) for p in out["metrics"].glob("*.json")}
    assert set(metrics) == {"fp32", "q8", "q4"}
    numbers = lambda m: [x for v in m.values() for x in (v.values() if isinstance(v, dict) else [v])]  # noqa: E731
    assert all(len(numbers(m)) <= 14 and all(isinstance(v, (int, float)) for v in numbers(m)) for m in metrics.values())
    assert metrics["q8"]["fixed"] == {"p50_ms": 8.0, "speedup": 1.25} and metrics["q8"]["compression"] == 4.0
    pareto = pd.read_csv(out["pareto.csv"])
    assert list(pareto["variant"]) == ["fp32", "q8", "q4"] and {"accuracy", "latency_ms", "size_MiB"} <= set(pareto.columns)


def test_max_accuracy_drop_is_validated():
    from ptqflow.config import build
    from ptqflow.errors import PtqflowError

    with pytest.raises(PtqflowError, match="max_accuracy_drop must be a fraction"):
        build(ReportParams, {"max_accuracy_drop": 5}, "report")


def test_many_variants_are_one_family_for_the_accuracy_verdicts(tmp_path):
    """Ten variants flipping a few answers each way: a raw p just under 0.05 is a chance call among ten, and the
    adjusted p says so (Holm by default; Benjamini-Hochberg as the option); a large real drop stays significant."""
    from ptqflow.comparison import compare_all

    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    actual = ["a", "b"] * 500
    base = [("b" if x == "a" else "a") if i % 10 == 0 else x for i, x in enumerate(actual)]  # 90% right

    def write(name, wrong_now, right_now):
        pred = list(base)
        right = [i for i in range(len(actual)) if base[i] == actual[i]]
        wrong = [i for i in range(len(actual)) if base[i] != actual[i]]
        for i in right[:wrong_now]:
            pred[i] = "b" if actual[i] == "a" else "a"
        for i in wrong[:right_now]:
            pred[i] = actual[i]
        pd.DataFrame({"actual": actual, "predicted": pred}).to_csv(pred_dir / f"{name}.csv", index=False)

    write("fp32", 0, 0)
    write("lucky", 1, 9)      # raw McNemar p = 0.0215: "significantly better" by chance alone among ten
    write("lossy", 60, 0)     # a real 6-point drop
    for k in range(8):
        write(f"same{k}", 2, 2)
    names = ["fp32", "lucky", "lossy", *(f"same{k}" for k in range(8))]
    holm = compare_all(names, pred_dir, ReportParams())
    assert holm["lucky"]["mcnemar_p"] < 0.05 and holm["lucky"]["mcnemar_p_adjusted"] >= 0.05
    assert not holm["lucky"]["significant"] and holm["lucky"]["verdict"] == "no significant change"
    assert holm["lossy"]["significant"] and holm["lossy"]["mcnemar_p_adjusted"] < 1e-10
    assert holm["lucky"]["family_size"] == 10 and holm["fp32"]["mcnemar_p_adjusted"] == 1.0
    none = compare_all(names, pred_dir, ReportParams(multiple_comparisons="none"))
    assert none["lucky"]["significant"]  # what the report said before: one false call
    bh = compare_all(names, pred_dir, ReportParams(multiple_comparisons="bh"))
    assert holm["lucky"]["mcnemar_p_adjusted"] >= bh["lucky"]["mcnemar_p_adjusted"] >= none["lucky"]["mcnemar_p"]


def test_each_traffic_profile_gets_its_fastest_and_a_disagreement_is_said():
    """`a` answers one text fastest, `b` a stream of batches: the recommendation names each per profile, `fastest`
    is the first profile's, the markdown says that the profiles disagree in one sentence, and the package stage's
    `fastest:batch` takes `b`."""
    from ptqflow.package import choose
    from ptqflow.report import format_table, recommendation_markdown

    details = {n: _metrics(n, size, 0.9) for n, size in (("fp32", 4_000_000), ("a", 1_000_000), ("b", 2_000_000))}
    bench = fake_bench({}, profiles={"online": {"fp32": 10.0, "a": 4.0, "b": 8.0},
                                     "batch": {"fp32": 100.0, "a": 60.0, "b": 40.0}})
    params = ReportParams()
    rows = summary_rows(details, params, bench)
    rec = recommend(rows, params)
    assert rec["fastest_by_profile"] == {"online": "a", "batch": "b"} and rec["fastest"] == "a"
    assert rec["primary_profile"] == "online" and rows[2]["profiles"]["batch"]["speedup"] == 2.5
    text = recommendation_markdown(rec, rows, params)
    assert "Fastest acceptable for `online`: `a`" in text and "Fastest acceptable for `batch`: `b`" in text
    assert text.count("The profiles disagree") == 1 and "`a` is fastest for `online`; `b` is fastest for `batch`" in text
    table = format_table(rows, "MiB")
    assert table.splitlines()[0].count("|") == 11 and "online: p50, vs fp32 [95% CI]" in table
    assert "batch: rows/s" in table and "2.50x [2.50, 2.50]" in table
    comparison = {"recommendation": rec, "variants": {r["variant"]: r for r in rows}}
    assert choose(comparison, "fastest:batch") == ("b", "batch") and choose(comparison, "fastest") == ("a", "online")
    assert choose(comparison, "smallest") == ("a", None)
    from ptqflow.errors import PtqflowError

    with pytest.raises(PtqflowError, match="no profile 'bulk'"):
        choose(comparison, "fastest:bulk")
