"""`anomaly`: Mahalanobis distance from the activations on clean prompts (knows neither)."""

import numpy as np

from petridish.measures.detectors import SiteActivations, register_detector
from petridish.measures.probes import mahalanobis_scores


@register_detector("anomaly")
def anomaly(x: SiteActivations, seed: int) -> np.ndarray:
    return mahalanobis_scores(x.reference, x.eval)
