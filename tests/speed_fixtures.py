"""Constructed benchmark records (what the `benchmark` stage writes) for report and recommendation tests."""

from __future__ import annotations

import numpy as np


def fake_bench(medians: dict[str, float], rounds: int = 12, noise: float = 0.0, seed: int = 0, batch_size: int = 16) -> dict:
    """A benchmark record in which variant v's per-round medians are medians[v] x (1 + noise x N(0, 1))."""
    rng = np.random.default_rng(seed)
    variants = {}
    for name, ms in medians.items():
        per_round = [float(ms * (1 + noise * rng.standard_normal())) for _ in range(rounds)]
        variants[name] = {
            "variant": name, "timed": "interleaved with all", "first_call_ms": {str(batch_size): ms * 2},
            "latency": [{"batch_size": batch_size, "median_ms": float(np.median(per_round)), "p95_ms": max(per_round) * 1.05,
                         "iqr_ms": float(np.subtract(*np.percentile(per_round, [75, 25]))), "round_medians_ms": per_round}],
        }
    return {
        "environment": {"device_name": "cpu: test", "torch": "t", "transformers": "t", "bitsandbytes": None},
        "date": "2026-11-28",
        "protocol": {"batch_sizes": [batch_size], "rounds": rounds, "warmup": 1, "iters": 3, "seq_len": 128, "seed": 0,
                     "timer": "time.perf_counter", "threads": 2, "anchor": "fp32"},
        "variants": variants,
    }
