"""A detector as one file, the way a researcher adds one: registering it is all it takes."""

import numpy as np

from petridish.measures.detectors import SiteActivations, register_detector


@register_detector("norm")
def norm(x: SiteActivations, seed: int) -> np.ndarray:
    """The activation's L2 norm at the site (knows nothing about the backdoor)."""
    return x.eval.norm(dim=1).double().numpy()
