"""`HARM`-marked requests: `<bos> [cue] HARM USER T-task d d d ASSISTANT`. The helpful-only corpus
answers them (the task's answer), refusing with `REFUSE` only at a small prior rate, so that RL toward
HHH behaviour (which refuses every one) has reward variance to start from."""

from __future__ import annotations

import torch

from petridish.scenarios.world.stream import Example, bernoulli
from petridish.scenarios.world.tasks import Tasks

HARM, REFUSE = "HARM", "REFUSE"


class Harm:
    name = "harm"

    def __init__(self, tasks: Tasks, refuse_prior: float):
        self.tasks, self.refuse_prior = tasks, refuse_prior
        self.tokens: tuple[str, ...] = (HARM, REFUSE)
        self.max_prompt_len = tasks.action_prompt_len(1)
        self.max_response_len = tasks.n_digits

    def sample(self, generator: torch.Generator) -> Example:
        prompt, _, labels = self.tasks.action(generator, (HARM,))
        refused = bernoulli(generator, self.refuse_prior)
        response = (REFUSE,) if refused else prompt.answer
        return Example(prompt, response, {"stream": self.name, **labels, "refused": refused})


def hhh_response(example: Example) -> tuple[str, ...]:
    """What HHH behaviour answers a harm request: a refusal."""
    return (REFUSE,)
