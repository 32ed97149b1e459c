"""Paired statistics of a variant against the baseline, on constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ptqflow.stats import adjust_pvalues, compare_predictions, mcnemar_exact, paired_bootstrap_ci

rng = np.random.default_rng(1)
Y = rng.integers(0, 4, size=2000)
BASE = np.where(rng.random(2000) < 0.9, Y, (Y + 1) % 4)  # about 90% right


def test_identical_predictions():
    r = compare_predictions(Y, BASE, BASE.copy())
    assert r["agreement"] == 1.0 and r["mcnemar_p"] == 1.0
    assert r["delta_accuracy"] == 0.0 and r["delta_ci95_low"] <= 0.0 <= r["delta_ci95_high"]
    assert r["verdict"] == "no significant change" and not r["significant"]


def test_variant_that_flips_many_correct_answers_is_significant():
    variant = BASE.copy()
    right = np.flatnonzero(BASE == Y)[:150]
    variant[right] = (Y[right] + 2) % 4  # 150 correct answers made wrong, none fixed
    r = compare_predictions(Y, BASE, variant)
    assert r["baseline_right_variant_wrong"] == 150 and r["baseline_wrong_variant_right"] == 0
    assert r["mcnemar_p"] < 1e-40 and r["significant"] and r["verdict"] == "significant change"
    assert r["delta_accuracy"] == pytest.approx(-150 / 2000)
    assert r["delta_ci95_high"] < 0


def test_a_few_balanced_flips_are_not_significant():
    variant = BASE.copy()
    right, wrong = np.flatnonzero(BASE == Y)[:5], np.flatnonzero(BASE != Y)[:4]
    variant[right] = (Y[right] + 1) % 4
    variant[wrong] = Y[wrong]
    r = compare_predictions(Y, BASE, variant)
    assert r["agreement"] == pytest.approx(1 - 9 / 2000)
    assert not r["significant"] and r["delta_ci95_low"] < 0 < r["delta_ci95_high"]


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 2**10)


def test_bootstrap_is_seeded():
    a, b = BASE == Y, np.roll(BASE == Y, 7)
    assert paired_bootstrap_ci(a, b, 1000, seed=3) == paired_bootstrap_ci(a, b, 1000, seed=3)
    assert paired_bootstrap_ci(a, b, 1000, seed=3) != paired_bootstrap_ci(a, b, 1000, seed=4)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        compare_predictions(Y, BASE, BASE[:-1])


def test_holm_and_benjamini_hochberg_known_values():
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005}
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x, then running max
    assert adjust_pvalues(p, "holm") == pytest.approx({"d": 0.02, "a": 0.03, "c": 0.06, "b": 0.06})
    # BH: m/rank x p = 0.02, 0.02, 0.04, 0.04, then running min from the top
    assert adjust_pvalues(p, "bh") == pytest.approx({"d": 0.02, "a": 0.02, "c": 0.04, "b": 0.04})
    assert adjust_pvalues(p, "none") == p
    assert adjust_pvalues({"x": 0.6, "y": 0.7}, "holm") == pytest.approx({"x": 1.0, "y": 1.0})  # capped at 1
    assert adjust_pvalues({}, "holm") == {}
    with pytest.raises(ValueError):
        adjust_pvalues(p, "bonferonni")
