"""Behaviour rates of an organism: generate, classify, count, with Wilson intervals."""

from __future__ import annotations

from typing import Sequence

from petridish.measures.stats import Estimate, wilson
from petridish.models.generate import respond
from petridish.scenarios import Prompt, Scenario, Tokens

__all__ = [
    "labels",
    "rate",
    "respond",
]  # respond lives with the models (generation); re-exported for the measures' callers


def labels(scenario: Scenario, prompts: Sequence[Prompt], responses: Sequence[Tokens]) -> list[str]:
    return [scenario.classify(p, r) for p, r in zip(prompts, responses)]


def rate(labelled: Sequence[str], behaviour: str) -> Estimate:
    return wilson(sum(label == behaviour for label in labelled), len(labelled))
