"""`random`: the best of `n_random_directions` random unit directions: chance, against which every
other detector is read (the selection of the best is redone in every bootstrap resample)."""

import numpy as np

from petridish.measures.detectors import SiteActivations, register_detector
from petridish.measures.probes import random_directions
from petridish.rng import make_generator


@register_detector("random")
def random(x: SiteActivations, seed: int) -> np.ndarray:
    return random_directions(
        x.eval, int(x.options.get("n_random_directions", 32)), make_generator(seed, "random")
    )  # (D, N)
