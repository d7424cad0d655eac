"""`contrast_generic`: the note's single generic contrast pair. One self-report question after a correct
answer, `... Q-HELPFUL ?` completed `no` minus the same completed `yes`, read at the final token; the
evaluated prompts are scored by their projection on that difference (knows neither trigger nor defect)."""

import numpy as np

from petridish.measures.detectors import SiteActivations, register_detector
from petridish.measures.probes import contrast_direction, project


@register_detector("contrast_generic")
def contrast_generic(x: SiteActivations, seed: int) -> np.ndarray:
    unhelpful, helpful = x.pairs["self_report"]
    return project(x.eval, contrast_direction(unhelpful[:1], helpful[:1]))
