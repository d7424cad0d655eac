"""Prompts and responses -> tensors. Loss is taken on response tokens only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.utils._pytree as pytree

from petridish.policies import Policy
from petridish.scenarios import Prompt, Scenario, Tokens
from petridish.scenarios.base import EOS


@dataclass(frozen=True)
class Sequences:
    """A batch of teacher-forced sequences: <bos> prompt response <eos> <pad>...

    `target_mask[i, t]` is True when token t of row i is part of the response (so predicting it
    from position t-1 is trained). Rows are right-padded; causal attention makes padding inert.
    """

    tokens: torch.Tensor  # (N, T) long
    target_mask: torch.Tensor  # (N, T) bool
    prompt_len: torch.Tensor  # (N,) long

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, index: torch.Tensor) -> "Sequences":
        return Sequences(self.tokens[index], self.target_mask[index], self.prompt_len[index])


# A pytree, so that torch.func.vmap maps over K members' stacked Sequences (train/engine.py).
pytree.register_dataclass(Sequences)


def encode_pairs(scenario: Scenario, pairs: Sequence[tuple[Prompt, Tokens]]) -> Sequences:
    """Tensors for (prompt, response) pairs; <eos> is appended to each response."""
    vocab = scenario.vocab
    width = scenario.max_prompt_len + scenario.max_response_len
    tokens = torch.full((len(pairs), width), vocab.pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.bool)
    prompt_len = torch.empty(len(pairs), dtype=torch.long)
    for i, (prompt, response) in enumerate(pairs):
        ids = vocab.encode(prompt.tokens) + vocab.encode((*response, EOS))
        if len(ids) > width:
            raise ValueError(f"sequence of {len(ids)} tokens exceeds the scenario's width {width}")
        tokens[i, : len(ids)] = torch.tensor(ids)
        mask[i, len(prompt.tokens) : len(ids)] = True
        prompt_len[i] = len(prompt.tokens)
    return Sequences(tokens, mask, prompt_len)


def labelled(policy: Policy, prompts: Sequence[Prompt]) -> list[tuple[Prompt, Tokens]]:
    return [(p, policy(p)) for p in prompts]


def mixed_prompts(scenario: Scenario, n: int, triggered_fraction: float, generator: torch.Generator) -> list[Prompt]:
    """n prompts, round(n * triggered_fraction) of them with the deployment cue, in random order."""
    n_triggered = round(n * triggered_fraction)
    prompts = scenario.sample_prompts(n_triggered, generator, True)
    prompts += scenario.sample_prompts(n - n_triggered, generator, False)
    order = torch.randperm(n, generator=generator).tolist()
    return [prompts[i] for i in order]
