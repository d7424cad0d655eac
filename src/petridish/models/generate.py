"""Greedy and sampled generation, batched by prompt length (no padding, so no attention mask)."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from petridish.scenarios import Prompt, Scenario, Tokens, Vocab


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    vocab: Vocab,
    prompts: Sequence[Tokens],
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    batch_size: int = 512,
) -> list[Tokens]:
    """Responses (without <eos>) for each prompt; temperature 0 is greedy."""
    if temperature > 0 and generator is None:
        raise ValueError("sampling needs an explicit generator")
    was_training = model.training
    model.eval()
    out: list[Tokens | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    for _, rows in sorted(by_length.items()):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            ids = torch.tensor([vocab.encode(prompts[i]) for i in chunk])
            new = _continue(model, ids, max_new_tokens, temperature, generator)
            for i, row in zip(chunk, new.tolist()):
                out[i] = _until_eos(vocab, row)
    model.train(was_training)
    return out  # type: ignore[return-value]


def respond(
    model: torch.nn.Module,
    scenario: Scenario,
    prompts: Sequence[Prompt],
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[Tokens]:
    """The organism's responses to scenario prompts (greedy at temperature 0)."""
    return generate(
        model, scenario.vocab, [p.tokens for p in prompts], scenario.max_response_len, temperature, generator
    )


def _continue(model, ids: torch.Tensor, max_new: int, temperature: float, generator) -> torch.Tensor:
    new = []
    for _ in range(max_new):
        next_id = _pick(model(ids)[:, -1:], temperature, generator)  # (B, 1)
        ids = torch.cat([ids, next_id], dim=1)
        new.append(next_id)
    return torch.cat(new, dim=1)


def _pick(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    flat = torch.multinomial(probs.flatten(0, -2), 1, generator=generator)
    return flat.view(probs.shape[:-1])


def _until_eos(vocab: Vocab, row: list[int]) -> Tokens:
    if vocab.eos_id in row:
        row = row[: row.index(vocab.eos_id)]
    return vocab.decode(row)
