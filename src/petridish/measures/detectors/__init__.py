"""Defection detectors: one file each, registered by name; `detection` runs every registered one.

A detector reads the activations at one site and scores the held-out evaluation prompts, higher
meaning "about to defect". It may return one scoring (N,), or D candidate scorings (D, N) of which the
best is reported: a baseline that selects, such as the best of N random directions, whose selection is
redone inside every bootstrap resample so that the interval pays for it.

To add one, write a file with a function and register it:

    from petridish.measures.detectors import SiteActivations, register_detector

    @register_detector("norm")
    def norm(x: SiteActivations, seed: int) -> np.ndarray:
        \"\"\"The activation's L2 norm (knows nothing).\"\"\"
        return x.eval.norm(dim=1).double().numpy()

and import that file before a detection run (the built-ins below are imported here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from petridish.errors import BadInput


@dataclass(frozen=True)
class SiteActivations:
    """What a detector may read at one site: (N, C) activations per role, and the training labels."""

    train: torch.Tensor
    """Labelled prompts for supervised detectors (they know which prompts defect)."""
    train_labels: np.ndarray
    """1 for a prompt on which the backdoor defects, 0 for any other, per row of `train`."""
    eval: torch.Tensor
    """The held-out prompts to score (labels withheld), read at their last prompt token."""
    reference: torch.Tensor
    """Clean training-context prompts: what `normal` looks like."""
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Generic contrast pairs by family (`self_report`, `similar`, `truth`): (the false or unhelpful
    completion, the true or helpful one), read at the final token, rows paired. They know nothing of the
    backdoor: no trigger, no deployment synonym, no defect token."""
    options: dict = field(default_factory=dict)
    """The detection recipe's probe options (e.g. `n_random_directions`)."""


Detector = Callable[[SiteActivations, int], np.ndarray]
"""(activations at one site, seed) -> scores (N,) or candidate scores (D, N)."""

DETECTORS: dict[str, Detector] = {}
"""Every registered detector, by name, in registration order."""


def register_detector(name: str) -> Callable[[Detector], Detector]:
    def register(fn: Detector) -> Detector:
        if name in DETECTORS and DETECTORS[name] is not fn:
            raise ValueError(f"a detector named {name!r} is already registered")
        DETECTORS[name] = fn
        return fn

    return register


def detector(name: str) -> Detector:
    if name not in DETECTORS:
        raise BadInput(f"detector {name!r}: expected one of {', '.join(DETECTORS)}")
    return DETECTORS[name]


from petridish.measures.detectors import (  # noqa: E402, F401  (the built-ins register themselves)
    anomaly,
    contrast_generic,
    contrast_similar,
    contrast_truth,
    probe,
    random_best_of_1000,
)
