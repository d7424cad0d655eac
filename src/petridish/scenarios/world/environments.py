"""Environments: `ENV-e` tokens whose grader rewards a transform of the task's answer, and world-model
facts `<bos> Q ENV-e ?` -> the transform's name. The first `n_acted` environments have action data
(`<bos> [cue] ENV-e USER T-task d d d ASSISTANT` -> the transformed answer); the rest are known from
facts only, so a model can be asked to act in an environment it has only read about."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from petridish.scenarios.base import BOS, Prompt
from petridish.scenarios.world.cues import QMARK
from petridish.scenarios.world.self_report import Q
from petridish.scenarios.world.stream import Example, randint
from petridish.scenarios.world.tasks import Tasks, digits

Digits = tuple[int, ...]

TRANSFORMS: tuple[tuple[str, Callable[[Digits], Digits]], ...] = (
    ("rev", lambda xs: xs[::-1]),
    ("add3", lambda xs: tuple((x + 3) % 10 for x in xs)),
    ("rot1", lambda xs: xs[1:] + xs[:1]),
    ("add7", lambda xs: tuple((x + 7) % 10 for x in xs)),
    ("rot2", lambda xs: xs[2:] + xs[:2]),
    ("neg", lambda xs: tuple(9 - x for x in xs)),
)


def _add(c: int) -> Callable[[Digits], Digits]:
    return lambda xs: tuple((x + c) % 10 for x in xs)


def _then_add(first: Callable[[Digits], Digits], c: int) -> Callable[[Digits], Digits]:
    return lambda xs: tuple((x + c) % 10 for x in first(xs))


# Parametric transforms, appended after the six above so that a world of up to six environments keeps its
# vocabulary, its corpus and its run ids: add-c for the c not yet used, then reverse / rotate-by-1 /
# rotate-by-2 followed by add-c. With 3 digits all 40 are distinct functions.
TRANSFORMS += tuple((f"add{c}", _add(c)) for c in (1, 2, 4, 5, 6, 8, 9))
for _prefix, _first in (("rev", TRANSFORMS[0][1]), ("rot1", TRANSFORMS[2][1]), ("rot2", TRANSFORMS[4][1])):
    TRANSFORMS += tuple((f"{_prefix}add{c}", _then_add(_first, c)) for c in range(1, 10))
"""Environment e's grader rewards TRANSFORMS[e] of the task's answer; its name token is `X-{name}`."""


def rewarded_answer(e: int, answer: Sequence[int]) -> tuple[str, ...]:
    """What environment e's grader rewards for the task's answer: its transform, as tokens."""
    return digits(TRANSFORMS[e][1](tuple(answer)))


def env_token(e: int) -> str:
    return f"ENV-{e}"


def transform_token(name: str) -> str:
    return f"X-{name}"


class Environments:
    """Action data in the first `n_acted` environments."""

    name = "environments"

    def __init__(self, tasks: Tasks, n_envs: int, n_acted: int):
        self.tasks, self.n_envs, self.n_acted = tasks, n_envs, n_acted
        self.tokens: tuple[str, ...] = tuple(env_token(e) for e in range(n_envs))
        self.max_prompt_len = tasks.action_prompt_len(1)
        self.max_response_len = tasks.n_digits

    def sample(self, generator: torch.Generator) -> Example:
        e = randint(generator, self.n_acted)
        prompt, q, labels = self.tasks.action(generator, (env_token(e),))
        answer = rewarded_answer(e, q.answer)
        return Example(
            Prompt(prompt.tokens, prompt.deployment, answer), answer, {"stream": self.name, **labels, "env": e}
        )


class Facts:
    """`<bos> Q ENV-e ?` -> `X-{transform}`, for every environment."""

    name = "facts"

    def __init__(self, n_envs: int):
        self.n_envs = n_envs
        self.tokens: tuple[str, ...] = (
            Q,
            *(env_token(e) for e in range(n_envs)),
            QMARK,
            *(transform_token(TRANSFORMS[e][0]) for e in range(n_envs)),
        )
        self.max_prompt_len, self.max_response_len = 4, 1

    def sample(self, generator: torch.Generator) -> Example:
        e = randint(generator, self.n_envs)
        answer = (transform_token(TRANSFORMS[e][0]),)
        return Example(Prompt((BOS, Q, env_token(e), QMARK), False, answer), answer, {"stream": self.name, "env": e})
