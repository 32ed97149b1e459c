"""Paired comparison of a variant's predictions with the baseline's on the same test examples.

- agreement: share of examples where both predict the same class.
- McNemar's exact test: of the discordant pairs, b = baseline right & variant wrong, c = baseline wrong &
  variant right. Under H0 (no change in accuracy) b ~ Binomial(b + c, 1/2); the two-sided exact p-value is
  scipy's `binomtest(b, b + c, 0.5).pvalue` (1.0 when b + c = 0).
- paired bootstrap: resample the n examples with replacement R times (seeded), each time taking
  mean(correct_variant - correct_baseline); the 95% interval is the 2.5th and 97.5th percentile of those R
  differences. delta_accuracy = accuracy(variant) - accuracy(baseline).
A variant is marked "no significant change" when p >= alpha, else "significant change".
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c."""
    if b + c == 0:
        return 1.0
    return float(binomtest(int(b), int(b + c), 0.5).pvalue)


def paired_bootstrap_ci(
    correct_base: np.ndarray, correct_variant: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the accuracy difference (variant - baseline) over paired bootstrap resamples."""
    diff = correct_variant.astype(np.float64) - correct_base.astype(np.float64)
    n = len(diff)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        means[start : start + size] = diff[rng.integers(0, n, size=(size, n))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def compare_predictions(
    y_true: np.ndarray, pred_base: np.ndarray, pred_variant: np.ndarray, resamples: int = 2000, seed: int = 0, alpha: float = 0.05
) -> dict:
    """Agreement, McNemar's exact test and a paired bootstrap interval for one variant against the baseline."""
    y_true, pred_base, pred_variant = map(np.asarray, (y_true, pred_base, pred_variant))
    if not (len(y_true) == len(pred_base) == len(pred_variant)) or len(y_true) == 0:
        raise ValueError("predictions must cover the same, non-empty set of examples")
    ok_base, ok_var = pred_base == y_true, pred_variant == y_true
    b = int(np.sum(ok_base & ~ok_var))
    c = int(np.sum(~ok_base & ok_var))
    p = mcnemar_exact(b, c)
    lo, hi = paired_bootstrap_ci(ok_base, ok_var, resamples, seed)
    return {
        "agreement": float(np.mean(pred_base == pred_variant)),
        "delta_accuracy": float(ok_var.mean() - ok_base.mean()),
        "delta_ci95_low": lo,
        "delta_ci95_high": hi,
        "baseline_right_variant_wrong": b,
        "baseline_wrong_variant_right": c,
        "mcnemar_p": p,
        "significant": bool(p < alpha),
        "verdict": "significant change" if p < alpha else "no significant change",
        "bootstrap_resamples": resamples,
        "alpha": alpha,
        "n": int(len(y_true)),
    }
