"""Constructed benchmark records (what the `benchmark` stage writes) for report and recommendation tests."""

from __future__ import annotations

import numpy as np


def fake_bench(medians: dict[str, float], rounds: int = 12, noise: float = 0.0, seed: int = 0, batch_size: int = 16,
               profiles: dict[str, dict[str, float]] | None = None) -> dict:
    """A benchmark record in which variant v's per-round medians are medians[v] x (1 + noise x N(0, 1)), on one
    latency profile `fixed` (calls of `batch_size`); with `profiles` ({profile: {variant: ms}}), on each of those
    (a profile named `batch*` is a throughput profile: it pairs on per-round totals)."""
    rng = np.random.default_rng(seed)
    profiles = profiles or {"fixed": medians}
    variants: dict[str, dict] = {}
    for profile, table in profiles.items():
        throughput = profile.startswith("batch")
        for name, ms in table.items():
            per_round = [float(ms * (1 + noise * rng.standard_normal())) for _ in range(rounds)]
            rec = variants.setdefault(name, {"variant": name, "timed": "interleaved with all", "first_call_ms": {},
                                             "latency": []})
            rec["first_call_ms"][profile] = ms * 2
            rec["latency"].append({
                "profile": profile, "batch_size": batch_size, "median_ms": float(np.median(per_round)),
                "p95_ms": max(per_round) * 1.05, "p99_ms": max(per_round) * 1.1,
                "iqr_ms": float(np.subtract(*np.percentile(per_round, [75, 25]))), "round_medians_ms": per_round,
                "round_totals_ms": [4 * x for x in per_round], "rows_per_s": batch_size * 1000.0 / float(np.median(per_round)),
                "paired_on": "round_totals_ms" if throughput else "round_medians_ms"})
    info = {p: {"batch_size": batch_size, "padding": "fixed" if p == "fixed" else "longest", "order": "random", "rows": 4 * batch_size,
                "passes": 1, "statistic": "throughput" if p.startswith("batch") else "latency", "calls": 4, "rows_total": 4 * batch_size,
                "tokens_mean": 52.0, "tokens_median": 51.0, "tokens_p95": 79.0, "padding_share": 0.1,
                "max_length": 128 if p == "fixed" else None} for p in profiles}
    return {
        "environment": {"device_name": "cpu: test", "torch": "t", "transformers": "t", "bitsandbytes": None},
        "date": "2026-11-28",
        "protocol": {"workloads": list(profiles), "profiles": info, "rounds": rounds, "warmup": 1, "seed": 0,
                     "timer": "time.perf_counter", "threads": 2, "anchor": "fp32"},
        "variants": variants,
    }
