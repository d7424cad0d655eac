"""Intervals: Wilson for a rate, bootstrap for anything across seeds or prompts, Student t for a mean of a
handful of values where the percentile bootstrap undercovers (tests/test_stats.py measures both)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.stats import binomtest, bootstrap
from scipy.stats import t as student_t


@dataclass(frozen=True)
class Estimate:
    """A number with its 95% interval and the sample count behind it."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def as_metrics(self, name: str) -> dict[str, float]:
        """{name: value, name.ci_low: ..., name.ci_high: ..., name.n: ...}."""
        return {name: self.value, f"{name}.ci_low": self.ci_low, f"{name}.ci_high": self.ci_high, f"{name}.n": self.n}


def wilson(k: int, n: int, confidence: float = 0.95) -> Estimate:
    """The rate k/n with its Wilson score interval (scipy's); n = 0 gives the uninformative [0, 1]."""
    if n == 0:
        return Estimate(float("nan"), 0.0, 1.0, 0)
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Estimate(k / n, float(ci.low), float(ci.high), n)


def bootstrap_mean(values: Sequence[float], seed: int = 0, n_resamples: int = 2000) -> Estimate:
    """Mean with a percentile bootstrap 95% interval; one value gives a zero-width interval."""
    return bootstrap_stat(values, np.mean, seed, n_resamples)


def t_mean(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean with the Student t interval. With 4 values the percentile bootstrap's 95% interval covers the
    mean about 75% of the time (it cannot reach past the sample's range); t's covers it 95% of the time
    for normal values. One value, or equal values, give a zero-width interval."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    value = float(x.mean())
    if len(x) == 1 or np.all(x == x[0]):
        return Estimate(value, value, value, len(x))
    half = float(student_t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return Estimate(value, value - half, value + half, len(x))


def bootstrap_stat(values: Sequence[float], stat: Callable, seed: int = 0, n_resamples: int = 2000) -> Estimate:
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    value = float(stat(x))
    if len(x) == 1 or np.all(x == x[0]):
        return Estimate(value, value, value, len(x))
    result = bootstrap((x,), stat, n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
    return Estimate(value, float(result.confidence_interval.low), float(result.confidence_interval.high), len(x))


def paired_ratio(before: Sequence[float], after: Sequence[float], seed: int = 0, n_resamples: int = 2000) -> Estimate:
    """mean(after) / mean(before) over paired samples, with a bootstrap interval resampling the pairs."""
    b, a = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    n = len(b)
    value = a.mean() / b.mean() if n and b.mean() > 0 else float("nan")
    if n < 2:
        return Estimate(float(value), float("nan"), float("nan"), n)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    num, den = a[idx].mean(1), b[idx].mean(1)
    ratios = num[den > 0] / den[den > 0]
    low, high = np.percentile(ratios, [2.5, 97.5]) if len(ratios) else (float("nan"), float("nan"))
    return Estimate(float(value), float(low), float(high), n)


def bootstrap_slope(x: Sequence[float], y: Sequence[float], seed: int = 0, n_resamples: int = 2000) -> Estimate:
    """Least-squares slope of y on x with a percentile bootstrap 95% interval resampling the (x, y)
    points (the runs: every seed of every size); n = points. Fewer than two distinct x: NaN."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(xs)
    if n < 2 or np.unique(xs).size < 2:
        return Estimate(float("nan"), float("nan"), float("nan"), n)

    def slope(idx: np.ndarray) -> float:
        xi, yi = xs[idx], ys[idx]
        spread = ((xi - xi.mean()) ** 2).sum()
        return float(((xi - xi.mean()) * (yi - yi.mean())).sum() / spread) if spread > 0 else float("nan")

    rng = np.random.default_rng(seed)
    draws = np.array([slope(rng.integers(0, n, size=n)) for _ in range(n_resamples)])
    draws = draws[np.isfinite(draws)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return Estimate(slope(np.arange(n)), float(low), float(high), n)
