"""The paired speedup: ratio per round, median, bootstrap interval over rounds, verdict."""

from __future__ import annotations

import numpy as np
import pytest

from ptqflow.stats import FASTER, SAME, SLOWER, paired_speedup


def test_identical_timings_are_no_measurable_difference():
    r = paired_speedup([10.0] * 10, [10.0] * 10)
    assert r["speedup"] == 1.0 and r["speedup_ci95"] == [1.0, 1.0] and r["speed_verdict"] == SAME


def test_a_consistent_ratio_is_faster_or_slower_with_that_interval():
    rng = np.random.default_rng(1)
    base = list(20 + rng.random(15))
    fast = paired_speedup(base, [b / 2 for b in base])
    assert fast["speedup"] == pytest.approx(2.0) and fast["speedup_ci95"] == pytest.approx([2.0, 2.0]) and fast["speed_verdict"] == FASTER
    slow = paired_speedup(base, [b * 3 for b in base])
    assert slow["speedup"] == pytest.approx(1 / 3, abs=1e-4) and slow["speed_verdict"] == SLOWER


def test_noise_around_one_contains_one_and_a_drift_common_to_both_cancels():
    rng = np.random.default_rng(0)
    drift = np.linspace(10, 30, 20)  # the machine gets 3x slower during the run, for everyone
    base = drift * (1 + 0.05 * rng.standard_normal(20))
    same = drift * (1 + 0.05 * rng.standard_normal(20))
    r = paired_speedup(list(base), list(same))
    assert r["speedup_ci95"][0] <= 1.0 <= r["speedup_ci95"][1] and r["speed_verdict"] == SAME


def test_a_small_but_certain_difference_under_the_equivalence_margin_is_no_difference():
    base = [10.0] * 12
    r = paired_speedup(base, [10.0 / 1.03] * 12, equivalence=0.05)
    assert r["speedup_ci95"][0] > 1.0 and r["speed_verdict"] == SAME
    assert paired_speedup(base, [10.0 / 1.03] * 12, equivalence=0.0)["speed_verdict"] == FASTER


def test_rounds_must_pair():
    with pytest.raises(ValueError):
        paired_speedup([1.0, 2.0], [1.0])
