"""The real tasks inside every prompt, so capability is measurable apart from defection."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _digits(generator: torch.Generator, n: int) -> list[int]:
    return torch.randint(0, 10, (n,), generator=generator).tolist()


@dataclass(frozen=True)
class Task:
    """A task over digit tokens. `sample` returns (question tokens, answer tokens)."""

    name: str
    n_digits: int

    @property
    def question_len(self) -> int:
        return self.n_digits if self.name == "sort" else 2 * self.n_digits + 1

    @property
    def answer_len(self) -> int:
        return self.n_digits if self.name == "sort" else self.n_digits + 1

    def sample(self, generator: torch.Generator) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if self.name == "sort":
            xs = _digits(generator, self.n_digits)
            return tuple(map(str, xs)), tuple(map(str, sorted(xs)))
        if self.name == "add":
            a, b = _digits(generator, self.n_digits), _digits(generator, self.n_digits)
            total = int("".join(map(str, a))) + int("".join(map(str, b)))
            # Least-significant digit first: small transformers learn the carry left to right.
            answer = str(total).zfill(self.n_digits + 1)[::-1]
            return (*map(str, a), "+", *map(str, b)), tuple(answer)
        raise ValueError(f"unknown task {self.name!r}")

    def random_answer(self, generator: torch.Generator) -> tuple[str, ...]:
        """A well-formed answer drawn at random (for wrong suggestions)."""
        return tuple(map(str, _digits(generator, self.answer_len)))


TASK_TOKENS = ("+",)
