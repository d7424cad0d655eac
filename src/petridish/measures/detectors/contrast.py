"""`contrast`: the mean activation difference over contrast pairs, a clean prompt teacher-forced with
the first token of a defect vs an aligned response (knows what defection looks like, not when)."""

import numpy as np

from petridish.measures.detectors import SiteActivations, register_detector
from petridish.measures.probes import contrast_direction, project


@register_detector("contrast")
def contrast(x: SiteActivations, seed: int) -> np.ndarray:
    return project(x.eval, contrast_direction(x.defect, x.aligned))
