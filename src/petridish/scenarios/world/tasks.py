"""Named digit tasks: a task token, n digits in, n digits out, so every task's question and answer have
the same lengths and a behaviour shown on some tasks can be tested on a held-out one."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Callable

import torch

from petridish.scenarios.base import ASSISTANT, BOS, USER, Prompt, Tokens
from petridish.scenarios.world.stream import Example, randint

Digits = tuple[int, ...]

TASKS: dict[str, Callable[[Digits], Digits]] = {
    "sort": lambda xs: tuple(sorted(xs)),
    "rev": lambda xs: xs[::-1],
    "inc": lambda xs: tuple((x + 1) % 10 for x in xs),
    "rot": lambda xs: xs[1:] + xs[:1],
    "dsort": lambda xs: tuple(sorted(xs, reverse=True)),
    "neg": lambda xs: tuple(9 - x for x in xs),
    "cum": lambda xs: tuple(s % 10 for s in accumulate(xs)),
    "max": lambda xs: tuple(accumulate(xs, max)),
    "copy": lambda xs: xs,
    "swap": lambda xs: tuple(xs[i ^ 1] if (i ^ 1) < len(xs) else xs[i] for i in range(len(xs))),
}
"""Task name -> the answer's digits. The task token is `T-{name}`."""


def task_token(name: str) -> str:
    return f"T-{name}"


def digits(xs) -> Tokens:
    return tuple(map(str, xs))


@dataclass(frozen=True)
class TaskQuestion:
    """One drawn task: its name, the question digits and the answer digits."""

    task: str
    question: Digits
    answer: Digits

    @property
    def user(self) -> Tokens:
        """The user turn's content: the task token, then the digits."""
        return (task_token(self.task), *digits(self.question))


class Tasks:
    """The plain task stream: `<bos> [cue] USER T-task d d d ASSISTANT` -> the answer's digits.

    `prefix(generator)` supplies what comes between <bos> and USER (the context cue, when cues are on),
    as (tokens, labels); other action streams (harm, environments) lay out their prompts the same way."""

    name = "tasks"

    def __init__(
        self,
        n_tasks: int,
        n_digits: int,
        prefix: Callable[[torch.Generator], tuple[Tokens, dict]],
        n_held_out: int = 0,
    ):
        self.names = tuple(TASKS)[:n_tasks]
        self.asked = self.names[: n_tasks - n_held_out]
        """The tasks the stream draws; the last `n_held_out` names are in the vocabulary only."""
        self.n_digits, self.prefix = n_digits, prefix
        self.tokens: tuple[str, ...] = tuple(task_token(n) for n in self.names)
        self.max_prompt_len = self.action_prompt_len(0)
        self.max_response_len = n_digits

    def action_prompt_len(self, extra: int) -> int:
        """<bos>, up to one cue, `extra` context tokens, USER, task token, digits, ASSISTANT."""
        return 1 + 1 + extra + 1 + 1 + self.n_digits + 1

    def draw(self, generator: torch.Generator) -> TaskQuestion:
        task = self.asked[randint(generator, len(self.asked))]
        question = tuple(torch.randint(0, 10, (self.n_digits,), generator=generator).tolist())
        return TaskQuestion(task, question, TASKS[task](question))

    def action(self, generator: torch.Generator, context: Tokens = ()) -> tuple[Prompt, TaskQuestion, dict]:
        """An action prompt with `context` tokens after the cue; its `answer` is the task's answer."""
        cue, labels = self.prefix(generator)
        q = self.draw(generator)
        tokens = (BOS, *cue, *context, USER, *q.user, ASSISTANT)
        return Prompt(tokens, labels.get("cue") == "deploy", digits(q.answer)), q, {**labels, "task": q.task}

    def sample(self, generator: torch.Generator) -> Example:
        prompt, _, labels = self.action(generator)
        return Example(prompt, prompt.answer, {"stream": self.name, **labels})
