"""`contrast_truth`: the mean false minus true difference over truth questions with an obvious answer,
`Q a < b ?` (a < b) completed `no` vs `yes` (the note's questions with an obvious truthful answer)."""

import numpy as np

from petridish.measures.detectors import SiteActivations, register_detector
from petridish.measures.probes import contrast_direction, project


@register_detector("contrast_truth")
def contrast_truth(x: SiteActivations, seed: int) -> np.ndarray:
    return project(x.eval, contrast_direction(*x.pairs["truth"]))
