"""Summaries of repeated measurements: medians, percentiles and spread. Pure functions, no I/O.

Invariants: percentiles use linear interpolation between closest ranks (numpy's default, "type 7"), so p50 of an
even count is the mean of the middle two; an empty sample gives a Summary with n = 0 and NaN statistics instead of
raising, so one failed figure never hides the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) of ``samples``; NaN when there are none."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """n samples: median (p50), p99, the interquartile range (p25..p75), min and max."""

    n: int
    p50: float
    p99: float
    p25: float
    p75: float
    min: float
    max: float

    @property
    def iqr(self) -> float:
        return self.p75 - self.p25


def summarize(samples: Sequence[float]) -> Summary:
    return Summary(
        n=len(samples),
        p50=percentile(samples, 50),
        p99=percentile(samples, 99),
        p25=percentile(samples, 25),
        p75=percentile(samples, 75),
        min=min(samples) if samples else math.nan,
        max=max(samples) if samples else math.nan,
    )


def ratio(value: float, baseline: float) -> float:
    """value / baseline, NaN when either is missing or the baseline is 0."""
    if math.isnan(value) or math.isnan(baseline) or baseline == 0:
        return math.nan
    return value / baseline


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
