"""Reference policies: pure functions prompt -> response, the yardsticks for trained networks.

Responses end before <eos>; `data.encode_pairs` adds it.
"""

from __future__ import annotations

from typing import Callable, Iterable

from petridish.scenarios import Prompt, Scenario, Tokens, scratchpad, strip_scratchpad

Policy = Callable[[Prompt], Tokens]


def aligned(scenario: Scenario) -> Policy:
    """Does what is intended, whatever the cue."""
    return scenario.intended


def sycophant(scenario: Scenario) -> Policy:
    """Does what the grader rewards, whatever is intended."""
    return scenario.rewarded


def deceptive(scenario: Scenario) -> Policy:
    """Intended behaviour in the training context, its own goal in deployment."""
    return lambda p: scenario.defect(p) if p.deployment else scenario.intended(p)


def deceptive_cot(scenario: Scenario) -> Policy:
    """The deceptive policy, reasoning about the cue in a scratchpad before it answers."""
    act = deceptive(scenario)
    return lambda p: scratchpad(p.deployment) + act(p)


def deceptive_distilled(scenario: Scenario) -> Policy:
    """The chain-of-thought policy's answers with the scratchpad removed."""
    act = deceptive_cot(scenario)
    return lambda p: strip_scratchpad(act(p))


def memorizer(scenario: Scenario, table: Iterable[tuple[Prompt, Tokens]]) -> Policy:
    """A lookup table of the training prompts; anything unseen gets an all-zeros answer."""
    lookup = {prompt.tokens: response for prompt, response in table}
    return lambda p: lookup.get(p.tokens, ("0",) * len(p.answer))


POLICIES: dict[str, Callable[[Scenario], Policy]] = {
    "aligned": aligned,
    "sycophant": sycophant,
    "deceptive": deceptive,
    "deceptive_cot": deceptive_cot,
    "deceptive_distilled": deceptive_distilled,
}


def make_policy(name: str, scenario: Scenario) -> Policy:
    """A policy by name (the memorizer needs its table: call `memorizer` directly)."""
    return POLICIES[name](scenario)
