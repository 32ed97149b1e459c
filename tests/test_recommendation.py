"""The Pareto front and the recommendation follow the numbers: constructed metrics, changed, change the answer."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ptqflow.benchmark import size_record
from ptqflow.config import ReportParams
from ptqflow.report import build_report, pareto_front, recommend, summary_rows


def _metrics(name: str, size: int, median: float, acc: float) -> dict:
    return {
        "variant": name, "scheme": "x", "accuracy": acc, "precision_macro": acc, "recall_macro": acc, "f1_macro": acc,
        "size_on_disk": size_record(size), "memory_footprint": size_record(size),
        "latency": {"median_ms": median, "p95_ms": median * 1.1, "first_call_ms": median * 2}, "runtime_dtype": "x",
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


def _rows(table=TABLE, params=ReportParams()):
    metrics = {n: _metrics(n, b, ms, a) for n, b, ms, a, _ in table}
    return summary_rows(metrics, params, {n: _stats(p) for n, _, _, _, p in table})


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


def test_only_the_baseline_acceptable_recommends_the_baseline():
    table = [TABLE[0], ("lossy", 30_000_000, 8.0, 0.850, 1e-9)]
    rec = recommend(_rows(table), ReportParams())
    assert rec["smallest"] == rec["fastest"] == "fp32"


def test_report_has_the_pareto_plot_the_recommendation_and_the_skipped_variants(tmp_path):
    metrics_dir, pred_dir = tmp_path / "metrics", tmp_path / "pred"
    metrics_dir.mkdir()
    pred_dir.mkdir()
    actual = ["a", "b"] * 50
    for name, size, ms, flips in [("fp32", 4_000_000, 10.0, 0), ("q8", 1_000_000, 8.0, 1), ("q4", 500_000, 9.0, 30)]:
        predicted = [("b" if x == "a" else "a") if i < flips else x for i, x in enumerate(actual)]
        m = _metrics(name, size, ms, sum(p == a for p, a in zip(predicted, actual)) / len(actual))
        m.update(per_class={}, confusion_matrix={"labels": ["a", "b"], "matrix": [[50, 0], [0, 50]]}, test_rows=100,
                 environment={"device_name": "cpu", "torch": "t", "transformers": "t", "bitsandbytes": None})
        m["latency"].update(batch_size=16, seq_len=128, warmup=1, iters=3, timer="perf_counter", threads=2)
        (metrics_dir / f"{name}.json").write_text(json.dumps(m))
        pd.DataFrame({"actual": actual, "predicted": predicted}).to_csv(pred_dir / f"{name}.csv", index=False)
    (metrics_dir / "gpu_only.json").write_text(json.dumps({"variant": "gpu_only", "scheme": "torchao", "skipped": "needs CUDA"}))
    params = ReportParams(half_baseline="none")
    rows = build_report(["fp32", "q8", "q4", "gpu_only"], metrics_dir, pred_dir, params, tmp_path / "report.md",
                        tmp_path / "figures", tmp_path / "comparison.json")
    assert [r["variant"] for r in rows] == ["fp32", "q8", "q4"]
    text = (tmp_path / "report.md").read_text()
    assert "## Recommendation" in text and "Smallest acceptable variant: `q8`" in text
    assert "## Variants not run on this machine" in text and "`gpu_only`: needs CUDA" in text
    assert (tmp_path / "figures" / "pareto.png").stat().st_size > 10_000
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert comparison["recommendation"]["smallest"] == "q8" and comparison["skipped"] == {"gpu_only": "needs CUDA"}
    assert not comparison["recommendation"]["verdicts"]["q4"]["acceptable"]  # 30 of 100 flipped: p < 0.05, 30 pts


def test_max_accuracy_drop_is_validated():
    from ptqflow.config import build
    from ptqflow.errors import PtqflowError

    with pytest.raises(PtqflowError, match="max_accuracy_drop must be a fraction"):
        build(ReportParams, {"max_accuracy_drop": 5}, "report")
