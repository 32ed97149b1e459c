"""Metrics on a known confusion matrix, size accounting, the latency summary, the report table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptqflow.benchmark import measure_latency, size_record, summarize
from ptqflow.config import ReportParams
from ptqflow.evaluate import classification_metrics, pad_batch
from ptqflow.report import summary_rows, table1


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
    s = summarize([10.0, 12.0, 11.0, 30.0, 13.0], batch_size=16)
    assert s["median_ms"] == 12.0 and s["min_ms"] == 10.0 and s["max_ms"] == 30.0
    assert s["p95_ms"] == pytest.approx(26.6)
    assert s["throughput_samples_per_s"] == pytest.approx(16 / 0.012, abs=0.01)


def test_measure_latency_runs_the_protocol():
    model = torch.nn.Linear(4, 2)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = model

        def forward(self, input_ids, attention_mask):
            return self.lin(input_ids.float())

    r = measure_latency(Wrap(), {"input_ids": torch.ones(3, 4, dtype=torch.long), "attention_mask": torch.ones(3, 4)}, warmup=1, iters=4)
    assert r["iters"] == 4 and r["batch_size"] == 3 and r["seq_len"] == 4
    assert 0 < r["min_ms"] <= r["median_ms"] <= r["p95_ms"] <= r["max_ms"]
    assert r["peak_rss_bytes"] > 0


def test_pad_batch_pads_right_with_a_mask():
    b = pad_batch([[5, 6, 7], [8]], pad_id=0, length=4)
    assert b["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


def _metrics(size: int, median: float, acc: float) -> dict:
    return {
        "scheme": "x", "accuracy": acc, "precision_macro": acc, "recall_macro": acc, "f1_macro": acc,
        "size_on_disk": size_record(size), "memory_footprint": size_record(size),
        "latency": {"median_ms": median, "p95_ms": median * 1.1}, "runtime_dtype": "float32",
    }


def test_compression_and_speedup_are_against_the_baseline():
    metrics = {"fp32": _metrics(4_000_000, 100.0, 0.9), "q": _metrics(1_000_000, 50.0, 0.89)}
    rows = summary_rows(metrics, ReportParams(baseline="fp32", size_unit="MB"))
    assert rows[1]["compression"] == pytest.approx(4.0) and rows[1]["speedup"] == pytest.approx(2.0)
    assert rows[1]["size"] == pytest.approx(1.0)
    text = table1(rows, "MB")
    assert "| Compression | 1.00x | 4.00x |" in text and "Size on disk (MB)" in text


def test_bench_from_config_writes_json_and_markdown(tmp_path, shared):
    import json
    import subprocess
    import sys

    from .conftest import GPT2, ROOT

    out = tmp_path / "bench"
    r = subprocess.run(
        [sys.executable, "-m", "ptqflow", "bench", "--params", str(ROOT / "params.yaml"), "--variants", "fp32,fp16,int8_scratch",
         "--from-config", str(GPT2), "--override", "n_layer=1", "--override", "n_embd=64", "--override", "n_head=2",
         "--batch-sizes", "1,2", "--seq-len", "16", "--warmup", "1", "--iters", "2", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    bench = json.loads(out.with_suffix(".json").read_text())
    assert [res["variant"] for res in bench["results"]] == ["fp32", "fp16", "int8_scratch"]
    assert all([lat["batch_size"] for lat in res["latency"]] == [1, 2] for res in bench["results"])
    assert bench["model"]["n_layer"] == 1 and bench["protocol"]["iters"] == 2 and "bench" in bench["command"]
    table = out.with_suffix(".md").read_text()
    assert "| fp16 | float16 |" in table and "vs fp16" in table and "| fp32 | float32 |" in table
