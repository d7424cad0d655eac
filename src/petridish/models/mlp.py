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
    batchable = True
    """Pure tensor code: the training engine vmaps K of these over their stacked parameters."""

    def __init__(self, vocab_size: int, prompt_len: int, response_len: int, width: int, depth: int, generator: torch.Generator):
        super().__init__()
        self.vocab_size, self.prompt_len, self.response_len = vocab_size, prompt_len, response_len
        dims = [vocab_size * prompt_len] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.readout = nn.Linear(dims[-1], response_len * vocab_size)
        for layer in [*self.hidden, self.readout]:
            bound = 1 / layer.in_features**0.5
            with torch.no_grad():
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
                layer.bias.zero_()

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        """prompts (B, P) right-padded ids -> logits (B, R, V) for the response positions."""
        x = F.one_hot(prompts[:, : self.prompt_len], self.vocab_size).float().flatten(1)  # (B, P*V)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.readout(x).view(-1, self.response_len, self.vocab_size)
