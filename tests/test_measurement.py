"""Metrics on a known confusion matrix, size accounting, the latency summary, the report table, `ptqflow bench`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptqflow.batches import pad_batch
from ptqflow.benchmark import Protocol, interleave, latency_summary
from ptqflow.config import ReportParams
from ptqflow.evaluate import classification_metrics
from ptqflow.comparison import summary_rows
from ptqflow.report import table1
from ptqflow.sizes import size_record

from .speed_fixtures import fake_bench


def test_metrics_on_a_known_confusion_matrix():
    # class 0: 8 right, 2 predicted as 1; class 1: 5 right, 5 predicted as 0
    y_true = np.array([0] * 10 + [1] * 10)
    y_pred = np.array([0] * 8 + [1] * 2 + [1] * 5 + [0] * 5)
    m = classification_metrics(y_true, y_pred, ["a", "b"])
    assert m["confusion_matrix"]["matrix"] == [[8, 2], [5, 5]]
    assert m["accuracy"] == pytest.approx(13 / 20)
    assert m["per_class"]["a"]["precision"] == pytest.approx(8 / 13)
    assert m["per_class"]["a"]["recall"] == pytest.approx(0.8)
    assert m["per_class"]["b"]["precision"] == pytest.approx(5 / 7)
    assert m["per_class"]["b"]["f1"] == pytest.approx(2 * (5 / 7) * 0.5 / (5 / 7 + 0.5))
    assert m["per_class"]["a"]["accuracy"] == pytest.approx((20 - 5 - 2) / 20)  # one-vs-rest
    assert m["per_class"]["a"]["support"] == 10
    assert m["precision_macro"] == pytest.approx((8 / 13 + 5 / 7) / 2)


def test_sizes_state_their_units():
    s = size_record(497_759_232)  # 124.44 M float32 parameters
    assert s == {"bytes": 497_759_232, "MiB": 474.7002, "MB": 497.7592}


def test_latency_summary():
    s = latency_summary([[10.0, 12.0, 11.0], [30.0, 13.0, 12.0]], batch_size=16)
    assert s["median_ms"] == 12.0 and s["min_ms"] == 10.0 and s["max_ms"] == 30.0 and s["passes"] == 6
    assert s["p95_ms"] == pytest.approx(np.percentile([10, 12, 11, 30, 13, 12], 95))
    assert s["iqr_ms"] == pytest.approx(np.percentile([10, 12, 11, 30, 13, 12], 75) - np.percentile([10, 12, 11, 30, 13, 12], 25))
    assert s["round_medians_ms"] == [11.0, 13.0]
    assert s["throughput_samples_per_s"] == pytest.approx(16 / 0.012, abs=0.01)


class _Wrap(torch.nn.Module):
    def __init__(self, repeats: int = 1):
        super().__init__()
        self.lin, self.repeats = torch.nn.Linear(4, 2), repeats

    def forward(self, input_ids, attention_mask):
        for _ in range(self.repeats):
            out = self.lin(input_ids.float())
        return out


def test_interleave_times_every_variant_in_every_round_in_a_seeded_order():
    calls = []

    class Spy(_Wrap):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, input_ids, attention_mask):
            calls.append(self.name)
            return super().forward(input_ids, attention_mask)

    batch = {"input_ids": torch.ones(3, 4, dtype=torch.long), "attention_mask": torch.ones(3, 4)}
    res = interleave({"a": Spy("a"), "b": Spy("b"), "c": Spy("c")}, {3: batch}, Protocol(rounds=4, warmup=1, iters=2, seed=7),
                     torch.device("cpu"))
    first, visits = calls[:3], calls[3:]
    assert first == ["a", "b", "c"]  # the first call of each, timed apart
    assert len(visits) == 4 * 3 * (1 + 2)
    orders = [visits[i:i + 9][::3] for i in range(0, len(visits), 9)]  # each visit = 3 consecutive calls
    assert all(sorted(o) == ["a", "b", "c"] for o in orders) and len({tuple(o) for o in orders}) > 1
    for name in "abc":
        lat = res[name]["latency"][0]
        assert lat["passes"] == 8 and len(lat["round_medians_ms"]) == 4 and res[name]["first_call_ms"]["3"] > 0
        assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p95_ms"] <= lat["max_ms"]
    calls.clear()
    interleave({"a": Spy("a"), "b": Spy("b"), "c": Spy("c")}, {3: batch}, Protocol(rounds=4, warmup=1, iters=2, seed=7),
               torch.device("cpu"))
    assert calls[3:] == visits  # same seed, same order


def test_pad_batch_pads_right_with_a_mask():
    b = pad_batch([[5, 6, 7], [8]], pad_id=0, length=4)
    assert b["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


def _metrics(size: int, acc: float) -> dict:
    return {
        "scheme": "x", "accuracy": acc, "precision_macro": acc, "recall_macro": acc, "f1_macro": acc,
        "size_on_disk": size_record(size), "memory_footprint": size_record(size), "runtime_dtype": "float32",
    }


def test_compression_and_speedup_are_against_the_baseline():
    metrics = {"fp32": _metrics(4_000_000, 0.9), "q": _metrics(1_000_000, 0.89)}
    rows = summary_rows(metrics, ReportParams(baseline="fp32", size_unit="MB"), fake_bench({"fp32": 100.0, "q": 50.0}))
    assert rows[1]["compression"] == pytest.approx(4.0) and rows[1]["speedup"] == pytest.approx(2.0)
    assert rows[1]["speed_verdict"] == "faster" and rows[0]["speed_verdict"] == "baseline"
    assert rows[1]["size"] == pytest.approx(1.0)
    text = table1(rows, "MB")
    assert "| Compression | 1.00x | 4.00x |" in text and "Size on disk (MB)" in text
    assert "| `fixed`: speedup vs fp32 [95% CI] | 1.00x [1.00, 1.00] | 2.00x [2.00, 2.00] |" in text


def test_half_baseline_auto_is_the_faster_half_precision_cast_here():
    metrics = {"fp32": _metrics(4, 0.9), "fp16": {**_metrics(2, 0.9), "scheme": "cast", "runtime_dtype": "float16"},
               "bf16": {**_metrics(2, 0.9), "scheme": "cast", "runtime_dtype": "bfloat16"}}
    slow_fp16 = summary_rows(metrics, ReportParams(), fake_bench({"fp32": 100.0, "fp16": 400.0, "bf16": 50.0}))
    assert {r["half_baseline"] for r in slow_fp16} == {"bf16"}  # a CPU without native float16
    assert slow_fp16[0]["speedup_vs_half"] == pytest.approx(0.5)
    fast_fp16 = summary_rows(metrics, ReportParams(), fake_bench({"fp32": 100.0, "fp16": 20.0, "bf16": 50.0}))
    assert {r["half_baseline"] for r in fast_fp16} == {"fp16"}
    named = summary_rows(metrics, ReportParams(half_baseline="bf16"), fake_bench({"fp32": 100.0, "fp16": 20.0, "bf16": 50.0}))
    assert {r["half_baseline"] for r in named} == {"bf16"}


def test_bench_from_config_writes_json_and_markdown(tmp_path, shared):
    import json
    import subprocess
    import sys

    from .conftest import GPT2

    out = tmp_path / "bench"
    r = subprocess.run(
        [sys.executable, "-m", "ptqflow", "bench", "--set", "all", "--variants", "fp32,fp16,bf16,int8_scratch",
         "--from-config", str(GPT2), "--override", "n_layer=1", "--override", "n_embd=64", "--override", "n_head=2",
         "--batch-sizes", "1,2", "--seq-len", "16", "--rounds", "3", "--warmup", "1", "--iters", "2", "--device", "cpu",
         "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    bench = json.loads(out.with_suffix(".json").read_text())
    assert list(bench["variants"]) == ["fp32", "fp16", "bf16", "int8_scratch"]
    from ptqflow.machine import native_half

    native = [v for v, t in (("fp16", "float16"), ("bf16", "bfloat16")) if native_half(t)]
    assert (bench["half_baseline"] in native if native else bench["half_baseline"] is None) and bench["baseline"] == "fp32"
    for name, rec in bench["variants"].items():
        if name in ("fp16", "bf16") and name not in native:  # emulated on this CPU: said, not timed
            assert "is emulated on this CPU" in rec["skipped"] and "latency" not in rec
            continue
        assert [lat["batch_size"] for lat in rec["latency"]] == [1, 2]
        for lat in rec["latency"]:  # the fields the pipeline's comparison.json has
            assert len(lat["round_medians_ms"]) == 3 and lat["passes"] == 6
            lo, hi = lat["speedup_ci95"]
            assert lo <= lat["speedup"] <= hi and lat["speed_verdict"] in ("baseline", "faster", "slower", "no measurable difference")
    assert bench["variants"]["fp32"]["latency"][0]["speedup"] == 1.0 and bench["variants"]["fp32"]["latency"][0]["speed_verdict"] == "baseline"
    assert bench["model"]["num_hidden_layers"] == 1 and bench["model"]["model_type"] == "gpt2" and bench["protocol"]["iters"] == 2 and "bench" in bench["command"]
    assert bench["environment"]["cpu"]["model"] and bench["protocol"]["threads"] >= 1
    table = out.with_suffix(".md").read_text()
    assert "fp16" in table and "vs fp32 [95% CI]" in table and "| fp32 | float32 |" in table
    bad = subprocess.run([sys.executable, "-m", "ptqflow", "bench", "--set", "all", "--variants", "fp16",
                          "--from-config", str(GPT2), "--out", str(tmp_path / "x")], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "--baseline 'fp32' is not among the timed variants" in bad.stderr
    assert not (tmp_path / "x.json").exists()
