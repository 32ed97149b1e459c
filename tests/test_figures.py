"""The report's figures stay readable at 20+ variants: no label drawn over another, the baseline marked."""

from __future__ import annotations

import numpy as np
import pytest

from ptqflow.config import ReportParams
from ptqflow.figures import plot_metrics, plot_pareto, plot_size_latency
from ptqflow.comparison import recommend


def _rows(n: int, seed: int = 0) -> list[dict]:
    """n variants clustered as real ones are: near-identical accuracy, a few sizes, speeds around 1x."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        name = "fp32" if i == 0 else f"variant_{i:02d}_long_name"
        speed = 1.0 if i == 0 else float(np.exp(rng.normal(0, 0.5)))
        size = [26.1, 13.1, 6.5, 3.7][i % 4] * (1 + 0.01 * (i // 4))
        acc = 0.88 + 0.002 * rng.standard_normal() if i else 0.88
        verdict = "baseline" if i == 0 else ("faster" if speed > 1.1 else "slower" if speed < 0.9 else "no measurable difference")
        rows.append({
            "variant": name, "accuracy": acc, "precision": acc, "recall": acc, "f1": acc, "size": size,
            "size_bytes": int(size * 2**20), "compression": 26.1 / size, "latency_ms": 20.0 / speed, "speedup": speed,
            "speedup_ci95": [speed * 0.95, speed * 1.05], "speed_verdict": verdict,
            "effective_speedup": 1.0 if verdict in ("baseline", "no measurable difference") else speed,
            "stats": {"mcnemar_p": 0.5},
        })
    return rows


def _overlapping(boxes) -> int:
    return sum(1 for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b))


@pytest.mark.parametrize("n", [13, 20])
def test_pareto_labels_never_overlap(tmp_path, n):
    rows = _rows(n)
    params = ReportParams()
    rec = recommend(rows, params)
    panels = plot_pareto(rows, rec, params, tmp_path / "pareto.png")
    assert len(panels) == 2 and all(len(p) >= 4 for p in panels)
    assert [_overlapping(p) for p in panels] == [0, 0]
    assert (tmp_path / "pareto.png").stat().st_size > 20_000


@pytest.mark.parametrize("n", [13, 20])
def test_bar_figures_render_at_many_variants(tmp_path, n):
    rows = _rows(n)
    plot_size_latency(rows, ReportParams(), tmp_path / "size_latency.png")
    plot_metrics(rows, tmp_path / "metrics.png")
    assert (tmp_path / "size_latency.png").stat().st_size > 20_000 and (tmp_path / "metrics.png").stat().st_size > 10_000
