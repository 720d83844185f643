"""Uncertainty for evaluation numbers: seeded percentile bootstrap intervals and paired comparisons.

``bootstrap_ci`` resamples records with replacement and re-runs the metric's own aggregate on each
resample, so corpus metrics (BLEU, perplexity) get honest intervals too, not per-sentence averages.
``paired_bootstrap`` resamples the SAME record indices for two systems evaluated on the same items, which
removes the between-item variance a naive two-sample comparison would carry; its ``p_value`` is the share
of resamples where the sign of the difference flips (a "p-value-ish" number, as in Koehn 2004).

What it deliberately does not do: BCa intervals, multiple-comparison correction, or significance tests
with distributional assumptions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    value: float
    low: float
    high: float
    confidence: float
    n: int

    def to_dict(self) -> dict[str, float]:
        """Plain dict for JSON reports."""
        return asdict(self)


@dataclass(frozen=True)
class PairedResult:
    """Difference B - A on shared items, its interval, and the share of resamples where the sign flips."""

    a: float
    b: float
    diff: float
    low: float
    high: float
    p_value: float
    n: int

    def to_dict(self) -> dict[str, float]:
        """Plain dict for JSON reports."""
        return asdict(self)


def _check(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples!r}")


def _nanpercentile(values: np.ndarray, q: float) -> float:
    finite = values[np.isfinite(values)]
    return float(np.percentile(finite, q)) if finite.size else math.nan


def bootstrap_ci(
    stats: Sequence[Any],
    aggregate: Callable[[Sequence[Any]], float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``aggregate(stats)``.

    Args:
        stats: per-record statistics (see :mod:`nanoforge.evaluation.metrics`).
        aggregate: pools a list of statistics into one number.
        confidence: interval mass, e.g. 0.95.
        n_resamples: bootstrap resamples.
        seed: numpy Generator seed (same seed, same interval).
    """
    _check(confidence, n_resamples)
    n = len(stats)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, confidence, 0)
    rng = np.random.default_rng(seed)
    point = float(aggregate(stats))
    samples = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        samples[i] = aggregate([stats[j] for j in idx])
    alpha = (1.0 - confidence) / 2 * 100
    return Interval(
        point, _nanpercentile(samples, alpha), _nanpercentile(samples, 100 - alpha), confidence, n
    )


def paired_bootstrap(
    stats_a: Sequence[Any],
    stats_b: Sequence[Any],
    aggregate: Callable[[Sequence[Any]], float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> PairedResult:
    """Paired bootstrap of ``aggregate(b) - aggregate(a)``; item ``i`` of both lists is the same item.

    Raises:
        ValueError: if the lists differ in length.
    """
    _check(confidence, n_resamples)
    if len(stats_a) != len(stats_b):
        raise ValueError(f"paired lists differ in length: {len(stats_a)} vs {len(stats_b)}")
    n = len(stats_a)
    if n == 0:
        return PairedResult(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    a, b = float(aggregate(stats_a)), float(aggregate(stats_b))
    diff = b - a
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        diffs[i] = aggregate([stats_b[j] for j in idx]) - aggregate([stats_a[j] for j in idx])
    alpha = (1.0 - confidence) / 2 * 100
    # Share of resamples whose difference is on the other side of zero (or zero) from the observed one.
    if diff > 0:
        flips = float(np.mean(diffs <= 0))
    elif diff < 0:
        flips = float(np.mean(diffs >= 0))
    else:
        flips = 1.0
    return PairedResult(
        a, b, diff, _nanpercentile(diffs, alpha), _nanpercentile(diffs, 100 - alpha), flips, n
    )
