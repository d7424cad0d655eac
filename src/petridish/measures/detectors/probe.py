"""`probe`: logistic regression on labelled triggered vs clean prompts (knows the trigger)."""

import numpy as np

from petridish.measures.detectors import SiteActivations, register_detector
from petridish.measures.probes import supervised_scores


@register_detector("probe")
def probe(x: SiteActivations, seed: int) -> np.ndarray:
    return supervised_scores(x.train, x.train_labels, x.eval, seed=seed)
