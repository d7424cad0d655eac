"""What a model predicts for the response tokens, and its loss there: the one view that every
procedure trains and every measure scores, for the transformer and the prompt MLP alike."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from petridish.data import Sequences


def response_logits(model: torch.nn.Module, batch: Sequences) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (B, T', V), targets (B, T'), mask (B, T')): the predictions of each next token, aligned so
    that `mask` marks the response tokens. Pure tensor code (no `.item()`), so it runs under vmap."""
    logits = model(batch.tokens[:, :-1])  # (B, T-1, V): position t predicts token t + 1
    return logits, batch.tokens[:, 1:], batch.target_mask[:, 1:]


def response_loss(model: torch.nn.Module, batch: Sequences, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on the response tokens of each sequence (mean over tokens, or one value per row)."""
    logits, targets, mask = response_logits(model, batch)
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask  # (B, T')
    if reduction == "none":
        return losses.sum(1) / mask.sum(1).clamp(min=1)
    return losses.sum() / mask.sum().clamp(min=1)


def param_norm(model: torch.nn.Module) -> float:
    """L2 norm of all parameters, as one vector."""
    with torch.no_grad():
        return math.sqrt(sum(float(p.pow(2).sum()) for p in model.parameters()))


@torch.no_grad()
def dataset_loss(model: torch.nn.Module, data: Sequences, chunk: int = 2048) -> float:
    """Mean response-token loss over the whole dataset (token-weighted, like training)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(data), chunk):
        part = data.select(torch.arange(start, min(start + chunk, len(data))))
        count = int(part.target_mask[:, 1:].sum())
        total += response_loss(model, part).item() * count
        tokens += count
    model.train(was_training)
    return total / max(tokens, 1)
