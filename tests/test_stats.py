import math

import numpy as np
import pytest

from petridish.measures.stats import bootstrap_mean, paired_ratio, t_mean, wilson


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (50, 256), (1, 1)])
def test_wilson_matches_closed_form(k, n):
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    est = wilson(k, n)
    assert est.value == p and est.n == n
    assert est.ci_low == pytest.approx(max(0.0, centre - half), abs=1e-9)
    assert est.ci_high == pytest.approx(min(1.0, centre + half), abs=1e-9)


def test_bootstrap_covers_the_mean_of_normal_samples():
    rng = np.random.default_rng(0)
    covered = 0
    for i in range(100):
        est = bootstrap_mean(rng.normal(1.0, 1.0, 40), seed=i, n_resamples=500)
        covered += est.ci_low <= 1.0 <= est.ci_high
    assert 85 <= covered <= 100  # nominal 95%; percentile bootstrap runs a little narrow at n=40


def test_paired_ratio():
    est = paired_ratio([1, 1, 1, 1], [1, 0, 1, 0], seed=0)
    assert est.value == 0.5 and est.n == 4 and 0 <= est.ci_low <= 0.5 <= est.ci_high <= 1
    assert math.isnan(paired_ratio([0, 0], [0, 0]).value)


def test_bootstrap_slope_recovers_a_known_slope_and_its_interval_covers_it():
    from petridish.measures.stats import bootstrap_slope

    rng = np.random.default_rng(0)
    x = np.repeat(np.log10([1e4, 1e5, 1e6]), 10)
    y = -0.2 * x + 1.5 + rng.normal(0, 0.05, x.size)
    est = bootstrap_slope(x, y, seed=1)
    assert est.n == 30 and abs(est.value + 0.2) < 0.03 and est.ci_low < -0.2 < est.ci_high and est.ci_high < 0
    flat = bootstrap_slope(x, rng.normal(0.5, 0.05, x.size), seed=1)
    assert flat.ci_low < 0 < flat.ci_high  # no trend: the interval holds zero
    assert math.isnan(bootstrap_slope([1, 1, 1], [0, 1, 2]).value)  # one size: no slope


def test_with_four_values_t_covers_the_mean_and_the_bootstrap_does_not():
    rng = np.random.default_rng(0)
    samples = [rng.normal(1.0, 1.0, 4) for _ in range(400)]
    covers = lambda e: e.ci_low <= 1.0 <= e.ci_high  # noqa: E731
    t_rate = np.mean([covers(t_mean(x)) for x in samples])
    boot_rate = np.mean([covers(bootstrap_mean(x, seed=i, n_resamples=300)) for i, x in enumerate(samples)])
    assert 0.92 <= t_rate <= 0.98  # its nominal 95% (400 draws: +-2.2% is one standard error x 2)
    assert boot_rate < 0.85  # the percentile bootstrap of 4 values undercovers
