"""Behaviour rates of an organism: generate, classify, count, with Wilson intervals."""

from __future__ import annotations

from typing import Sequence

import torch

from petridish.measures.stats import Estimate, wilson
from petridish.models.generate import generate
from petridish.scenarios import Prompt, Scenario, Tokens


def respond(model: torch.nn.Module, scenario: Scenario, prompts: Sequence[Prompt], temperature: float = 0.0, generator: torch.Generator | None = None) -> list[Tokens]:
    return generate(model, scenario.vocab, [p.tokens for p in prompts], scenario.max_response_len, temperature, generator)


def labels(scenario: Scenario, prompts: Sequence[Prompt], responses: Sequence[Tokens]) -> list[str]:
    return [scenario.classify(p, r) for p, r in zip(prompts, responses)]


def rate(labelled: Sequence[str], behaviour: str) -> Estimate:
    return wilson(sum(label == behaviour for label in labelled), len(labelled))
