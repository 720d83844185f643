"""Bootstrap intervals and paired comparisons: seeded, sensible on clear-cut data."""

from __future__ import annotations

import math

import pytest

from nanoforge.evaluation.metrics import mean, perplexity
from nanoforge.evaluation.stats import bootstrap_ci, paired_bootstrap


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    stats = [1.0] * 30 + [0.0] * 20
    a = bootstrap_ci(stats, mean, seed=3, n_resamples=500)
    b = bootstrap_ci(stats, mean, seed=3, n_resamples=500)
    c = bootstrap_ci(stats, mean, seed=4, n_resamples=500)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.value == pytest.approx(0.6)
    assert a.low < 0.6 < a.high
    # normal approximation: sd of a mean of 50 Bernoulli(0.6) ~ 0.069 -> 95% half-width ~ 0.136
    assert 0.08 < a.high - a.low < 0.4
    assert a.n == 50


def test_bootstrap_constant_data_has_zero_width_and_empty_is_nan() -> None:
    ci = bootstrap_ci([1.0] * 10, mean, n_resamples=100)
    assert (ci.low, ci.value, ci.high) == (1.0, 1.0, 1.0)
    assert math.isnan(bootstrap_ci([], mean).value)


def test_bootstrap_of_a_corpus_metric_uses_its_aggregate() -> None:
    stats = [(-1.0, 1, 1), (-3.0, 1, 1), (-2.0, 1, 1), (-2.0, 1, 1)]
    ci = bootstrap_ci(stats, perplexity, n_resamples=300)
    assert ci.value == pytest.approx(math.exp(2.0))
    assert math.exp(1.0) <= ci.low <= ci.value <= ci.high <= math.exp(3.0)


def test_paired_bootstrap_clear_win_identical_and_errors() -> None:
    a = [0.0] * 40 + [1.0] * 10
    b = [1.0] * 40 + [1.0] * 10
    res = paired_bootstrap(a, b, mean, n_resamples=500)
    assert res.diff == pytest.approx(0.8)
    assert res.low > 0.5 and res.p_value == 0.0
    same = paired_bootstrap(a, a, mean, n_resamples=100)
    assert same.diff == 0.0 and same.p_value == 1.0
    # B fixes 2 of 20 items: the resampled difference is 0 with probability (18/20)^20 ~ 0.12
    base = [1.0, 0.0] * 10
    better = list(base)
    better[1] = better[3] = 1.0
    small = paired_bootstrap(base, better, mean, n_resamples=2000, seed=1)
    assert small.diff == pytest.approx(0.1)
    assert small.low <= 0.0 < small.high
    assert 0.06 < small.p_value < 0.2
    with pytest.raises(ValueError, match="differ in length: 2 vs 1"):
        paired_bootstrap([1.0, 0.0], [1.0], mean)
    with pytest.raises(ValueError, match="confidence must be in"):
        bootstrap_ci([1.0], mean, confidence=1.5)
