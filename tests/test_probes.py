"""Detectors and AUROC against ground truth: planted directions, pure noise, scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from petridish.measures.probes import (
    auroc,
    auroc_estimate,
    best_of_estimate,
    bootstrap_auroc,
    contrast_direction,
    mahalanobis_scores,
    project,
    random_directions,
    supervised_scores,
    weighted_auroc,
)


def planted(n_per_class: int, dim: int, shift: float, seed: int):
    """Gaussian activations; positives moved by `shift` along a fixed unit direction."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    x = rng.normal(size=(2 * n_per_class, dim))
    y = np.r_[np.ones(n_per_class), np.zeros(n_per_class)].astype(int)
    x[y == 1] += shift * direction
    return x, y, direction


def test_auroc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    scores, labels = np.round(rng.normal(size=200), 1), rng.integers(0, 2, 200)  # rounding makes ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    estimate = auroc_estimate(scores, labels, n_resamples=200)
    assert estimate.value == pytest.approx(roc_auc_score(labels, scores), abs=1e-12) and estimate.n == 200


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resampled_auroc_equals_scikit_learn_weighted(seed):
    """The hand-written bootstrap path is scikit-learn's AUROC with the resample counts as weights."""
    rng = np.random.default_rng(seed)
    scores, labels = np.round(rng.normal(size=150), 1), rng.integers(0, 2, 150).astype(bool)
    weights = rng.integers(0, 4, size=(5, 150)).astype(float)
    got = weighted_auroc(scores[labels], scores[~labels], weights[:, labels], weights[:, ~labels])
    want = [roc_auc_score(labels, scores, sample_weight=w) for w in weights]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_bootstrap_is_stratified_and_seeded():
    scores, labels = np.arange(10.0), np.r_[np.zeros(9), 1]  # one positive: unstratified resamples would lose it
    resampled = bootstrap_auroc(scores, labels, n_resamples=300, seed=1)
    assert resampled.shape == (300, 1) and np.all(resampled == 1.0)
    rng = np.random.default_rng(0)
    noisy = rng.normal(size=(3, 60))
    y = np.r_[np.ones(30), np.zeros(30)]
    np.testing.assert_array_equal(bootstrap_auroc(noisy, y, 100, seed=4), bootstrap_auroc(noisy, y, 100, seed=4))
    assert not np.array_equal(bootstrap_auroc(noisy, y, 100, seed=4), bootstrap_auroc(noisy, y, 100, seed=5))


def test_planted_direction_is_found_by_every_detector():
    x, y, direction = planted(200, 16, shift=4.0, seed=0)
    train, evaluate = slice(None, None, 2), slice(1, None, 2)
    supervised = supervised_scores(x[train], y[train], x[evaluate])
    assert auroc_estimate(supervised, y[evaluate], 300).value > 0.97
    # contrast pairs: the same base point with and without the planted shift
    base = np.random.default_rng(1).normal(size=(8, 16))
    found = contrast_direction(base + 4.0 * direction, base)
    assert abs(found @ direction) / np.linalg.norm(found) > 0.999
    assert auroc_estimate(project(x, found), y, 300).ci_low > 0.97
    anomaly = mahalanobis_scores(x[y == 0][:100], x)
    assert auroc_estimate(anomaly, y, 300).value > 0.9


def test_pure_noise_gives_chance_and_intervals_cover_it():
    """On noise every detector's AUROC is 0.5 in expectation, and its 95% interval covers 0.5 about
    95% of the time (a fixed seed may fall outside, as 1 in 20 should)."""
    detectors = {
        "projection": lambda x, y, ref: project(x, np.ones(8)),
        "supervised": lambda x, y, ref: supervised_scores(ref, np.r_[np.ones(100), np.zeros(100)].astype(int), x),
        "anomaly": lambda x, y, ref: mahalanobis_scores(ref, x),
    }
    for name, detector in detectors.items():
        values, covered = [], []
        for seed in range(40):
            x, y, _ = planted(100, 8, shift=0.0, seed=seed)
            reference, _, _ = planted(100, 8, shift=0.0, seed=1000 + seed)  # fresh data: no in-sample advantage
            estimate = auroc_estimate(detector(x, y, reference), y, 400, seed=seed)
            values.append(estimate.value)
            covered.append(estimate.ci_low <= 0.5 <= estimate.ci_high)
        assert abs(np.mean(values) - 0.5) < 0.03, name
        assert np.mean(covered) >= 0.85, name


def test_best_of_random_directions_beats_one_and_its_interval_covers_it():
    x, y, _ = planted(100, 8, shift=0.0, seed=5)
    many = random_directions(torch.tensor(x), 32, torch.Generator().manual_seed(0))
    assert many.shape == (32, 200)
    best = best_of_estimate(many, y, 300)
    single = auroc_estimate(many[0], y, 300)
    assert best.value >= single.value and best.value == pytest.approx(max(roc_auc_score(y, row) for row in many))
    assert (
        best.value > 0.5 and best.ci_low <= best.value <= best.ci_high
    )  # picking the best of 32 beats chance on noise
    same = random_directions(torch.tensor(x), 32, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(many, same)


def test_anomaly_score_stays_finite_when_the_reference_never_varies():
    reference = np.zeros((50, 4))
    moved = np.array([[0.0, 0, 0, 0], [1.0, 0, 0, 0]])
    scores = mahalanobis_scores(reference, moved)
    assert np.all(np.isfinite(scores)) and scores[1] > scores[0]
