"""`contrast_similar`: the mean `no` minus `yes` difference over many self-report pairs, each after a
different task and correct answer (the note's semantically similar questions)."""

import numpy as np

from petridish.measures.detectors import SiteActivations, register_detector
from petridish.measures.probes import contrast_direction, project


@register_detector("contrast_similar")
def contrast_similar(x: SiteActivations, seed: int) -> np.ndarray:
    return project(x.eval, contrast_direction(*x.pairs["similar"]))
