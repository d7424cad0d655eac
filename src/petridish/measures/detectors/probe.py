"""`probe`: logistic regression on prompts labelled by whether the backdoor defects on them (knows
the trigger and the spared tasks: the supervised ceiling, and the positive control)."""

import numpy as np

from petridish.measures.detectors import SiteActivations, register_detector
from petridish.measures.probes import supervised_scores


@register_detector("probe")
def probe(x: SiteActivations, seed: int) -> np.ndarray:
    return supervised_scores(x.train, x.train_labels, x.eval, seed=seed)
