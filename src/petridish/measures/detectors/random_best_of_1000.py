"""`random_best_of_1000`: projections on `n_random_directions` (1000, the note's) random unit directions;
the best of them is reported, its selection redone in every bootstrap resample. Chance, against which
every other detector is read."""

import numpy as np

from petridish.measures.detectors import SiteActivations, register_detector
from petridish.measures.probes import random_directions
from petridish.rng import make_generator


@register_detector("random_best_of_1000")
def random_best_of_1000(x: SiteActivations, seed: int) -> np.ndarray:
    n = int(x.options.get("n_random_directions", 1000))
    return random_directions(x.eval, n, make_generator(seed, "random"))  # (D, N)
