"""An MLP for scenarios that need no sequence model: the one-hot prompt in, every response position out.

It takes the same teacher-forced tokens as the transformer and returns logits of the same shape, so
the training loop and the measures treat both alike; it reads only the prompt (up to ASSISTANT), so
position t's prediction never depends on the response.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PromptMLP(nn.Module):
    """tokens (B, T) -> logits (B, T, V), as the transformer's: position t predicts token t + 1. It reads
    only the prompt (through the first `assistant_id`), one-hot, and predicts the R response tokens at
    once; positions outside the response get zero logits (no loss is taken there)."""

    batchable = True
    """Pure tensor code: the training engine vmaps K of these over their stacked parameters."""

    def __init__(
        self,
        vocab_size: int,
        prompt_len: int,
        response_len: int,
        width: int,
        depth: int,
        generator: torch.Generator,
        assistant_id: int,
    ):
        super().__init__()
        self.vocab_size, self.prompt_len, self.response_len, self.assistant_id = (
            vocab_size,
            prompt_len,
            response_len,
            assistant_id,
        )
        dims = [vocab_size * prompt_len] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.readout = nn.Linear(dims[-1], response_len * vocab_size)
        for layer in [*self.hidden, self.readout]:
            bound = 1 / layer.in_features**0.5
            with torch.no_grad():
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
                layer.bias.zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T = tokens.shape
        P, R, V = self.prompt_len, self.response_len, self.vocab_size
        prompt_end = (tokens == self.assistant_id).int().argmax(1)  # (B,): the prompt's last position
        columns = torch.arange(max(T, P), device=tokens.device)
        prompts = F.pad(tokens, (0, max(P - T, 0)))[:, :P].masked_fill(columns[:P] > prompt_end[:, None], 0)  # (B, P)
        x = F.one_hot(prompts, V).float().flatten(1)  # (B, P*V)
        for layer in self.hidden:
            x = F.relu(layer(x))
        responses = self.readout(x).view(B, R, V)
        offset = columns[:T] - prompt_end[:, None]  # (B, T): response position each position predicts
        picked = responses.gather(1, offset.clamp(0, R - 1)[..., None].expand(B, T, V))
        return picked * ((offset >= 0) & (offset < R))[..., None]  # (B, T, V)
