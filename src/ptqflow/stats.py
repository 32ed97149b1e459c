"""Paired comparison of a variant's predictions with the baseline's on the same test examples.

- agreement: share of examples where both predict the same class.
- McNemar's exact test: of the discordant pairs, b = baseline right & variant wrong, c = baseline wrong &
  variant right. Under H0 (no change in accuracy) b ~ Binomial(b + c, 1/2); the two-sided exact p-value is
  scipy's `binomtest(b, b + c, 0.5).pvalue` (1.0 when b + c = 0).
- paired bootstrap: resample the n examples with replacement R times (seeded), each time taking
  mean(correct_variant - correct_baseline); the 95% interval is the 2.5th and 97.5th percentile of those R
  differences. delta_accuracy = accuracy(variant) - accuracy(baseline).
A variant is marked "no significant change" when p >= alpha, else "significant change"; with several variants
against one baseline, `p` is the adjusted p-value of the family (below), so that the verdicts hold jointly.

Many variants, one baseline (`adjust_pvalues`): the m raw p-values p_(1) <= ... <= p_(m) of the variants that
were compared are adjusted for the number of comparisons:
- Holm (step-down, controls the family-wise error rate): p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j));
- Benjamini-Hochberg (controls the false discovery rate): p~_(i) = min_{j >= i} min(1, m / j * p_(j));
- none: p~ = p.
A variant is called significantly different when p~ < alpha.

Speed, from the interleaved benchmark (benchmark.py): in round i every variant is visited once, close in time,
and t_i is a variant's median pass time in that round. The paired ratio r_i = t_i(baseline) / t_i(variant)
(> 1: the variant is faster); speedup = median_i r_i; its 95% interval is the percentile bootstrap of that
median over rounds (rounds resampled with replacement, seeded). speed_verdict is "faster" when the whole
interval lies above 1 and the speedup is at least 1 + equivalence, "slower" when it lies below 1 and the
speedup is at most 1 / (1 + equivalence), else "no measurable difference" (then the variant counts as
equal in speed to the baseline). With m variants timed against one baseline, the verdict's interval is the
simultaneous one (Bonferroni: level 1 - alpha / m per variant), so that no verdict is a chance result of
looking at many; the plain 95% interval is reported beside it.
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


ADJUSTMENTS = ("holm", "bh", "none")


def adjust_pvalues(pvalues: dict[str, float], method: str = "holm") -> dict[str, float]:
    """Adjusted p-values for a family of comparisons against one baseline (module docstring)."""
    if method not in ADJUSTMENTS:
        raise ValueError(f"unknown adjustment {method!r} (known: {', '.join(ADJUSTMENTS)})")
    names = sorted(pvalues, key=lambda n: (pvalues[n], n))
    m = len(names)
    raw = np.array([pvalues[n] for n in names], dtype=np.float64)
    if method == "none" or m == 0:
        adjusted = raw
    elif method == "holm":
        adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * raw))
    else:  # Benjamini-Hochberg
        adjusted = np.minimum.accumulate(np.minimum(1.0, m / np.arange(1, m + 1) * raw)[::-1])[::-1]
    return {n: float(a) for n, a in zip(names, adjusted)}


def apply_adjustment(comparisons: dict[str, dict], method: str, alpha: float, exclude: str | None = None) -> dict[str, dict]:
    """Add `mcnemar_p_adjusted` and `adjustment` to each comparison and base `significant` / `verdict` on the
    adjusted p; the family is every compared variant except `exclude` (the baseline against itself)."""
    family = {n: c["mcnemar_p"] for n, c in comparisons.items() if n != exclude}
    adjusted = adjust_pvalues(family, method)
    for name, c in comparisons.items():
        p = adjusted.get(name, c["mcnemar_p"])
        c.update({"mcnemar_p_adjusted": p, "adjustment": method, "family_size": len(family), "significant": bool(p < alpha),
                  "verdict": "significant change" if p < alpha else "no significant change"})
    return comparisons


def simultaneous_level(alpha: float, family_size: int, method: str) -> float:
    """The confidence level of each of `family_size` intervals that hold jointly at 1 - alpha (Bonferroni); the
    plain 1 - alpha with no adjustment."""
    return 1.0 - alpha / max(family_size, 1) if method != "none" else 1.0 - alpha


FASTER, SLOWER, SAME = "faster", "slower", "no measurable difference"


def paired_speedup(
    base_round_ms: list[float], variant_round_ms: list[float], resamples: int = 2000, seed: int = 0,
    equivalence: float = 0.05, level: float = 0.95, verdict_level: float | None = None,
) -> dict:
    """Median per-round ratio baseline / variant, its bootstrap interval over rounds and the verdict (module
    docstring). The verdict uses the interval at `verdict_level` (the simultaneous one of a family; default `level`),
    reported as `speedup_ci_verdict` with that level."""
    base, var = np.asarray(base_round_ms, dtype=np.float64), np.asarray(variant_round_ms, dtype=np.float64)
    if len(base) != len(var) or len(base) == 0:
        raise ValueError("paired speedup needs the same, non-zero number of rounds for both")
    ratios = base / var
    rng = np.random.default_rng(seed)
    medians = np.median(ratios[rng.integers(0, len(ratios), size=(resamples, len(ratios)))], axis=1)
    tail = (1 - level) / 2 * 100
    lo95, hi95 = (float(x) for x in np.percentile(medians, [tail, 100 - tail]))
    verdict_level = level if verdict_level is None else verdict_level
    vtail = (1 - verdict_level) / 2 * 100
    lo, hi = (float(x) for x in np.percentile(medians, [vtail, 100 - vtail]))
    speedup = float(np.median(ratios))
    if lo > 1.0 and speedup >= 1.0 + equivalence:
        verdict = FASTER
    elif hi < 1.0 and speedup <= 1.0 / (1.0 + equivalence):
        verdict = SLOWER
    else:
        verdict = SAME
    return {"speedup": round(speedup, 4), "speedup_ci95": [round(lo95, 4), round(hi95, 4)], "speed_verdict": verdict,
            "speedup_ci_verdict": [round(lo, 4), round(hi, 4)], "verdict_level": round(verdict_level, 6),
            "rounds": int(len(ratios))}
