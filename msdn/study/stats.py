"""Summary statistics of a few refits: mean, standard deviation, t confidence intervals.

Pure functions: numbers in, numbers out. A study refits each configuration with a handful of seeds
(3 by default), so intervals are Student t intervals: with n values the mean's interval is
mean ± t(0.975, n - 1) · sd / √n. The comparison of two configurations is *paired* by seed (both are
trained with the same seeds), so its interval is the t interval of the per-seed differences, which
removes the share of the spread that the two runs of a seed have in common. A bootstrap would need
many more seeds than a study can afford: with 3 values it has only 10 distinct resamples.

Undefined figures are NaN (the standard deviation and interval of a single value), never an error,
so a study with one refit seed reports its value without an interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """The mean of n values, their sample standard deviation and a two-sided t confidence interval."""

    mean: float
    sd: float  # sample standard deviation (n - 1 in the denominator); NaN when n < 2
    low: float  # NaN when n < 2
    high: float
    n: int
    confidence: float = CONFIDENCE

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.sd, "ci_low": self.low, "ci_high": self.high, "n": float(self.n)}


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean; NaN for no values."""
    return math.fsum(values) / len(values) if len(values) else math.nan


def sd(values: Sequence[float]) -> float:
    """The sample standard deviation (denominator n - 1); NaN for fewer than two values."""
    n = len(values)
    if n < 2:
        return math.nan
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def t_quantile(probability: float, df: int) -> float:
    """The `probability` quantile of Student's t distribution with `df` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(probability, df))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean, sd and the t interval mean ± t((1 + confidence) / 2, n - 1) · sd / √n of `values`."""
    values = [float(v) for v in values]
    n = len(values)
    m, s = mean(values), sd(values)
    if n < 2:
        return Interval(m, math.nan, math.nan, math.nan, n, confidence)
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * s / math.sqrt(n)
    return Interval(m, s, m - half, m + half, n, confidence)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The t interval of the per-pair differences a[i] - b[i] (pairs share a seed); ValueError when lengths differ."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal counts; got {len(a)} and {len(b)}")
    return t_interval([float(x) - float(y) for x, y in zip(a, b)], confidence)
