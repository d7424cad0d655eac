"""What every stream of the world yields: examples, each a prompt, the response the corpus gives, and labels.

A stream knows its own tokens, its longest prompt and response, and how to draw one example from an
explicit generator. It knows nothing of models, of training, or of the other streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from petridish.scenarios.base import Prompt, Tokens


@dataclass(frozen=True)
class Example:
    prompt: Prompt
    """The prompt; `prompt.answer` is the stream's most likely response (what a fitted base answers greedily)."""
    response: Tokens
    """The response this example's corpus row carries (a sample: a harm request is sometimes refused)."""
    labels: dict = field(default_factory=dict, compare=False)
    """What the stream knows about it: always `stream`; others per stream (`cue`, `task`, `env`, `helpful`, ...)."""


class Stream(Protocol):
    name: str
    tokens: tuple[str, ...]
    """Tokens this stream adds to the vocabulary (shared ones may repeat across streams)."""
    max_prompt_len: int
    max_response_len: int
    """Without <eos>."""

    def sample(self, generator: torch.Generator) -> Example: ...


def randint(generator: torch.Generator, high: int) -> int:
    """One integer in [0, high)."""
    return int(torch.randint(0, high, (1,), generator=generator))


def bernoulli(generator: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=generator)) < p
