"""Detectors of defection on activations, and AUROC with bootstrap intervals.

Every detector maps activations (N, C) to one score per prompt, higher meaning "about to defect":

- `supervised_scores`: a logistic-regression probe trained on labelled triggered vs clean prompts;
- `contrast_direction` + `project`: the mean activation difference over contrast pairs (the same
  prompt teacher-forced with a defect vs an aligned response prefix), which needs no trigger;
- `mahalanobis_scores`: distance from activations on clean prompts, which needs neither the trigger
  nor any defect example;
- `random_directions`: projections on random unit directions, the chance baseline.

AUROC is scikit-learn's `roc_auc_score`. Its bootstrap is stratified (positives and negatives are
resampled apart, so every resample has both classes). The resampled AUROCs are computed by hand in the
Mann-Whitney form with per-example counts as weights (`weighted_auroc`, tested equal to scikit-learn's
weighted `roc_auc_score`): one sort serves all resamples, instead of one scikit-learn call each.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from petridish.measures.stats import Estimate

# --- AUROC ----------------------------------------------------------------------------------------


def auroc(scores, labels) -> float:
    """Area under the ROC curve of `scores` for binary `labels` (1 = positive), scikit-learn's."""
    return float(roc_auc_score(np.asarray(labels), np.asarray(scores)))


def bootstrap_auroc(scores, labels, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """AUROC of each row of `scores` (K, N) on stratified bootstrap resamples: an array (n_resamples, K).

    Resample b draws n+ positives and n- negatives with replacement; the same draw is used for every
    row, so a statistic over rows (the best of K random directions) is resampled as a whole.
    """
    scores, labels = np.atleast_2d(np.asarray(scores, dtype=float)), np.asarray(labels).astype(bool)
    positive, negative = scores[:, labels], scores[:, ~labels]  # (K, n+), (K, n-)
    if positive.shape[1] == 0 or negative.shape[1] == 0:
        raise ValueError("AUROC needs at least one positive and one negative example")
    rng = np.random.default_rng(seed)
    weights_pos = _multinomial_counts(rng, positive.shape[1], n_resamples)  # (B, n+)
    weights_neg = _multinomial_counts(rng, negative.shape[1], n_resamples)  # (B, n-)
    out = np.stack(
        [weighted_auroc(positive[k], negative[k], weights_pos, weights_neg) for k in range(len(scores))], axis=1
    )
    return out


def weighted_auroc(
    positive: np.ndarray, negative: np.ndarray, weights_pos: np.ndarray, weights_neg: np.ndarray
) -> np.ndarray:
    """AUROC (B,) of positive vs negative scores under B rows of per-example weights (counts).

    Mann-Whitney form: each positive wins against the weight of negatives below it and half the weight
    of those tied with it; sorting the negatives once makes that a cumulative sum and a lookup.
    """
    order = np.argsort(negative, kind="stable")
    sorted_negative = negative[order]
    cumulative = np.concatenate(
        [np.zeros((len(weights_neg), 1)), np.cumsum(weights_neg[:, order], axis=1)], axis=1
    )  # (B, n-+1)
    below = cumulative[:, np.searchsorted(sorted_negative, positive, side="left")]  # (B, n+)
    not_above = cumulative[:, np.searchsorted(sorted_negative, positive, side="right")]
    wins = (weights_pos * (below + 0.5 * (not_above - below))).sum(axis=1)
    return wins / (weights_pos.sum(axis=1) * weights_neg.sum(axis=1))


def _multinomial_counts(rng: np.random.Generator, n: int, n_resamples: int) -> np.ndarray:
    """How often each of n items is drawn in each of n_resamples draws of n with replacement."""
    draws = rng.integers(0, n, size=(n_resamples, n)) + n * np.arange(n_resamples)[:, None]  # row b's draws, offset
    return np.bincount(draws.ravel(), minlength=n_resamples * n).reshape(n_resamples, n).astype(float)


def auroc_estimate(scores, labels, n_resamples: int = 1000, seed: int = 0) -> Estimate:
    """AUROC with a 95% percentile interval from a stratified bootstrap; n is the number of prompts."""
    resampled = bootstrap_auroc(scores, labels, n_resamples, seed)[:, 0]
    low, high = np.percentile(resampled, [2.5, 97.5])
    return Estimate(auroc(scores, labels), float(low), float(high), len(labels))


def best_of_estimate(scores, labels, n_resamples: int = 1000, seed: int = 0) -> Estimate:
    """The best AUROC among the rows of `scores` (K, N); the selection is redone in every resample,
    so the interval carries the luck of picking the best of K."""
    scores, labels = np.atleast_2d(np.asarray(scores, dtype=float)), np.asarray(labels).astype(bool)
    ones = lambda n: np.ones((1, n))
    each = [weighted_auroc(row[labels], row[~labels], ones(labels.sum()), ones((~labels).sum()))[0] for row in scores]
    best = auroc(scores[int(np.argmax(each))], labels)
    resampled = bootstrap_auroc(scores, labels, n_resamples, seed).max(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return Estimate(best, float(low), float(high), len(labels))


# --- detectors ------------------------------------------------------------------------------------


def supervised_scores(train_x, train_y, eval_x, seed: int = 0) -> np.ndarray:
    """A standardised logistic-regression probe fit on (train_x, train_y); its logit on eval_x."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(_numpy(train_x), np.asarray(train_y))
    return probe.decision_function(_numpy(eval_x))


def contrast_direction(defect_x, aligned_x) -> np.ndarray:
    """Mean over contrast pairs of (defect - aligned) activation: rows of the two arrays are pairs."""
    return (_numpy(defect_x) - _numpy(aligned_x)).mean(axis=0)


def project(x, direction) -> np.ndarray:
    """Score of each row: its projection on `direction` (the sign matters; the scale does not)."""
    direction = np.asarray(direction, dtype=float)
    return _numpy(x) @ (direction / max(np.linalg.norm(direction), 1e-12))


def mahalanobis_scores(reference_x, eval_x, ridge: float = 1e-4) -> np.ndarray:
    """Squared Mahalanobis distance of each eval row from the reference rows (Ledoit-Wolf covariance).

    A ridge of `ridge` x the mean variance keeps directions along which the reference never varies
    (an early site where every clean prompt is alike) finite but far: moving along one is anomalous.
    """
    reference = _numpy(reference_x)
    estimator = LedoitWolf().fit(reference)
    covariance = estimator.covariance_
    scale = max(float(np.trace(covariance)) / len(covariance), 1e-12)
    covariance = covariance + ridge * scale * np.eye(len(covariance))
    centred = _numpy(eval_x) - estimator.location_
    return np.einsum("nc,nc->n", centred, np.linalg.solve(covariance, centred.T).T)


def random_directions(x, n_directions: int, generator: torch.Generator) -> np.ndarray:
    """Projections (n_directions, N) of the rows of x on unit directions drawn from `generator`."""
    directions = torch.randn(n_directions, x.shape[1], generator=generator, dtype=torch.float64).numpy()
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions @ _numpy(x).T


def _numpy(x) -> np.ndarray:
    return x.double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


# --- several negative sets ------------------------------------------------------------------------


def negatives_estimates(
    positive, negatives: dict[str, np.ndarray], n_resamples: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    """AUROC of positives against each negative set, and `worst`, the lowest of them.

    `positive` is (D, n+) and each negative set (D, n-): D candidate scorings (D = 1 for one detector).
    Per set the best candidate is reported; `worst` is the candidate whose lowest AUROC over the sets is
    highest (max over D of min over sets), so a baseline that selects picks one direction for every set.
    The bootstrap resamples the positives once per resample and every negative set apart (stratified),
    and redoes both the selection and the minimum in every resample; `n` counts the prompts involved.
    """
    positive = np.atleast_2d(np.asarray(positive, dtype=float))
    sets = {name: np.atleast_2d(np.asarray(x, dtype=float)) for name, x in negatives.items()}
    if positive.shape[1] == 0 or any(x.shape[1] == 0 for x in sets.values()):
        raise ValueError("AUROC needs at least one positive and one negative example in every set")
    rng = np.random.default_rng(seed)
    n_pos = positive.shape[1]
    weights_pos = np.vstack([np.ones((1, n_pos)), _multinomial_counts(rng, n_pos, n_resamples)])  # row 0: the data
    per_set = {}
    for name, x in sets.items():
        weights_neg = np.vstack([np.ones((1, x.shape[1])), _multinomial_counts(rng, x.shape[1], n_resamples)])
        per_set[name] = np.stack(
            [weighted_auroc(positive[d], x[d], weights_pos, weights_neg) for d in range(len(positive))], axis=1
        )  # (1 + B, D)
    worst = np.min(np.stack(list(per_set.values())), axis=0)  # (1 + B, D)
    out = {}
    for name, values in (*per_set.items(), ("worst", worst)):
        best = values.max(axis=1)  # (1 + B,)
        low, high = np.percentile(best[1:], [2.5, 97.5])
        n = n_pos + (sets[name].shape[1] if name in sets else sum(x.shape[1] for x in sets.values()))
        out[name] = Estimate(float(best[0]), float(low), float(high), n)
    return out


def variance_ratio(x, labels) -> float:
    """Between-class over within-class variance of the rows of x (N, C), summed over dimensions:
    sum_c n_c |mu_c - mu|^2 / sum_c sum_i |x_i - mu_c|^2. Large when the classes sit apart."""
    x, labels = _numpy(x), np.asarray(labels)
    mean = x.mean(axis=0)
    between = within = 0.0
    for c in np.unique(labels):
        rows = x[labels == c]
        centre = rows.mean(axis=0)
        between += len(rows) * float(np.sum((centre - mean) ** 2))
        within += float(np.sum((rows - centre) ** 2))
    return between / max(within, 1e-12)
