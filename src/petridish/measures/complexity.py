"""Complexity of a trained network: what a policy costs in inductive bias.

Five measures, each a pure function of (model, data): the parameter L2 norm; the compressed size in
bits (the coarsest uniform weight quantization that keeps the training loss within a tolerance, then
an ideal entropy coder over the quantized integers); the local learning coefficient (`measures.llc`);
the steps plain training needs to reach loss <= eps (read off a training run's evaluations); and the
minimal width that reaches loss <= eps (read off a width sweep, see `experiments.dual`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from petridish.config import require
from petridish.data import Sequences
from petridish.measures.llc import LLCConfig, estimate_llc
from petridish.models.loss import dataset_loss, param_norm, response_loss  # noqa: F401  (re-exported: measures of a network)


@dataclass(frozen=True)
class ComplexityConfig:
    bits_tolerance: float = 0.01
    """Compressed size: the coarsest quantization whose training loss is at most the original + this."""
    llc: LLCConfig = field(default_factory=LLCConfig)
    """SGLD settings of the local learning coefficient."""

    def __post_init__(self):
        require(self.bits_tolerance > 0, "bits_tolerance", "a number > 0", self.bits_tolerance)


# Quantization steps tried, coarse to fine: powers of two from 1 down to 2^-16.
QUANT_STEPS = tuple(2.0**-k for k in range(0, 17))


@dataclass(frozen=True)
class Compression:
    bits: float
    """Ideal entropy-coded size of the quantized weights, plus the symbol table."""
    step: float
    """The quantization step used (the coarsest that kept the loss within tolerance)."""
    loss: float
    """Training loss of the quantized network."""


@torch.no_grad()
def compressed_bits(
    model: torch.nn.Module,
    data: Sequences,
    tolerance: float,
    steps: Sequence[float] = QUANT_STEPS,
    reference: Sequence[torch.Tensor] | None = None,
) -> Compression:
    """Quantize every weight to a multiple of `step` (the same grid for all tensors), taking the coarsest
    step whose training loss stays within `tolerance` of the original, then count the bits an entropy
    coder needs: n * H(symbols) + 32 bits per distinct symbol (the table). The model is left unchanged.

    With `reference` (one tensor per parameter, e.g. the initialisation), what is quantized and coded is
    the change from it, so a weight training never moved codes as the symbol 0 and costs almost nothing."""
    original = {k: v.clone() for k, v in model.state_dict().items()}
    base = [torch.zeros_like(p) for p in model.parameters()] if reference is None else list(reference)
    target = dataset_loss(model, data) + tolerance
    try:
        for step in steps:
            symbols = [torch.round((p - p0) / step).to(torch.int64) for p, p0 in zip(model.parameters(), base)]
            for p, p0, s in zip(model.parameters(), base, symbols):
                p.copy_(p0 + s.to(p.dtype) * step)
            loss = dataset_loss(model, data)
            if loss <= target or step == steps[-1]:
                return Compression(entropy_bits(torch.cat([s.flatten() for s in symbols])), step, loss)
            model.load_state_dict(original)
    finally:
        model.load_state_dict(original)
    raise ValueError("no quantization steps given")


def entropy_bits(symbols: torch.Tensor) -> float:
    """n * H(empirical distribution) + 32 bits per distinct symbol: an arithmetic coder's length, up to
    a few bits, for a sequence coded with its own symbol counts."""
    _, counts = np.unique(symbols.numpy(), return_counts=True)
    n = counts.sum()
    return float(-(counts * np.log2(counts / n)).sum() + 32 * len(counts))


def steps_to_loss(evaluations: Sequence[tuple[int, float]], eps: float) -> int | None:
    """The first evaluated step whose full training loss is <= eps (None if training never got there)."""
    return next((step for step, loss in evaluations if loss <= eps), None)


def minimal_width(losses_by_width: dict[int, float], eps: float) -> int | None:
    """The smallest width whose least training loss is <= eps (None when no width in the sweep reaches it)."""
    return next((w for w in sorted(losses_by_width) if losses_by_width[w] <= eps), None)


def llc(model: torch.nn.Module, data: Sequences, config: LLCConfig, generator: torch.Generator) -> float:
    """The LLC of `model` on `data` with the training loss (response tokens)."""
    return estimate_llc(
        model, lambda m, index: response_loss(m, data.select(index)), len(data), config, generator
    ).value


def network_complexity(
    model: torch.nn.Module, data: Sequences, config: ComplexityConfig, generator: torch.Generator
) -> dict[str, float]:
    """The per-network measures: {param_norm, bits, llc, train_loss}."""
    return {
        "param_norm": param_norm(model),
        "bits": compressed_bits(model, data, config.bits_tolerance).bits,
        "llc": llc(model, data, config.llc, generator),
        "train_loss": dataset_loss(model, data),
    }
