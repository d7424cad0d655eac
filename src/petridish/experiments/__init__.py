"""Experiment families, registered by name."""

from petridish.experiments import detection, dual, persistence, pretrain, selection
from petridish.experiments.base import Experiment, NullContext, RunContext

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (persistence.EXPERIMENT, selection.EXPERIMENT, dual.EXPERIMENT, detection.EXPERIMENT, pretrain.EXPERIMENT)
}

__all__ = ["EXPERIMENTS", "Experiment", "NullContext", "RunContext"]
