"""The local learning coefficient (LLC) by SGLD, after Lau et al. 2023 (arXiv 2308.12108).

    llc = n_beta * (E_w[L_n(w)] - L_n(w*)),   w ~ exp(-n_beta L_n(w) - gamma/2 |w - w*|^2)

sampled by SGLD: w <- w - lr/2 (n_beta grad L_batch(w) + gamma (w - w*)) + N(0, lr). The update and the
estimand are devinterp 2.x's `sgmcmc_sgld` + `compute_llc`; one change lowers the variance without
moving the mean: each step's minibatch loss has the loss of w* on the same minibatch subtracted (a
control variate; the label noise in a minibatch otherwise swamps the signal after the n_beta factor). Written here rather than called because devinterp 2.x needs a Hugging Face
dataset of int64 token rows, writes a zarr store per call and seeds torch's global RNG; petridish
estimates hundreds of small chains in-process with explicit generators. tests/test_complexity.py checks
it against the analytic normal-crossing values and against devinterp on a tiny transformer.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from petridish.config import require

IndexLoss = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
"""(model, row indices) -> mean loss over those rows of the dataset (a scalar tensor)."""


@dataclass(frozen=True)
class LLCConfig:
    chains: int = 2
    """Independent SGLD chains; the estimate is their mean."""
    steps: int = 200
    """SGLD steps per chain."""
    burnin: int = 0
    """Leading steps of each chain left out of the average (devinterp's default is 0)."""
    lr: float = 1e-4
    """SGLD step size epsilon."""
    localization: float = 100.0
    """gamma: pull towards w*, which keeps the chain in w*'s basin."""
    batch_size: int = 64
    """Rows per SGLD minibatch."""
    n_beta: float = 0.0
    """Inverse temperature times n; 0 means the default n / log n (Watanabe's WBIC temperature)."""

    def __post_init__(self):
        require(self.chains >= 1, "chains", "an integer >= 1", self.chains)
        require(self.steps >= 1, "steps", "an integer >= 1", self.steps)
        require(0 <= self.burnin < self.steps, "burnin", f"an integer in [0, steps={self.steps})", self.burnin)
        require(self.lr > 0, "lr", "a number > 0", self.lr)
        require(self.localization >= 0, "localization", "a number >= 0", self.localization)
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        require(self.n_beta >= 0, "n_beta", "a number >= 0 (0: n / log n)", self.n_beta)


def default_n_beta(n: int) -> float:
    return n / math.log(n) if n > 1 else 1.0


@dataclass(frozen=True)
class LLCResult:
    value: float
    """Mean over chains."""
    per_chain: tuple[float, ...]
    init_loss: float
    """L_n(w*), the loss at the point being measured."""
    traces: tuple[tuple[float, ...], ...] = ()
    """Per chain, L_batch(w_t) - L_batch(w*) at every step, burn-in included (the evidence behind `value`)."""


def estimate_llc(
    model: torch.nn.Module, loss: IndexLoss, n: int, config: LLCConfig, generator: torch.Generator
) -> LLCResult:
    """The LLC of `model` at its current weights on a dataset of `n` rows; `model` is left unchanged."""
    n_beta = config.n_beta or default_n_beta(n)
    with torch.no_grad():
        init_loss = _full_loss(model, loss, n, config.batch_size)
    traces = tuple(tuple(_chain_trace(model, loss, n, n_beta, config, generator)) for _ in range(config.chains))
    per_chain = tuple(n_beta * sum(t[config.burnin :]) / len(t[config.burnin :]) for t in traces)
    return LLCResult(sum(per_chain) / len(per_chain), per_chain, init_loss, traces)


def _full_loss(model, loss: IndexLoss, n: int, batch_size: int) -> float:
    """Mean loss over all n rows, in chunks (row-weighted, so chunk sizes do not matter)."""
    total = 0.0
    for start in range(0, n, max(batch_size, 1024)):
        index = torch.arange(start, min(start + max(batch_size, 1024), n))
        total += loss(model, index).item() * len(index)
    return total / n


def _chain_trace(
    model, loss: IndexLoss, n: int, n_beta: float, config: LLCConfig, generator: torch.Generator
) -> list[float]:
    """Run one SGLD chain from w* on a copy of the model: L_batch(w_t) - L_batch(w*) at every step."""
    walker = copy.deepcopy(model)
    walker.train()
    params = [p for p in walker.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params]
    trace: list[float] = []
    for step in range(config.steps):
        index = torch.randint(0, n, (min(config.batch_size, n),), generator=generator)
        value = loss(walker, index)
        grads = torch.autograd.grad(value, params)
        with torch.no_grad():
            for p, g, p0 in zip(params, grads, anchor):
                drift = n_beta * g + config.localization * (p - p0)
                p.add_(drift, alpha=-0.5 * config.lr)
                p.add_(torch.randn(p.shape, generator=generator), alpha=config.lr**0.5)
        if not math.isfinite(value.item()):
            raise FloatingPointError(f"SGLD chain diverged at step {step}: lower llc.lr")
        with torch.no_grad():
            trace.append(value.item() - loss(model, index).item())
    return trace


def plateaued(trace: Sequence[float], burnin: int, tolerance: float) -> bool:
    """Whether a chain's post-burn-in trace has levelled off: the means of its two halves differ by at
    most `tolerance` times the larger of their magnitudes (or by at most 1e-6 nats when both are ~0)."""
    kept = list(trace[burnin:])
    half = len(kept) // 2
    require(half >= 1, "steps", f"at least burnin + 2 = {burnin + 2} SGLD steps for a plateau test", len(trace))
    first, second = sum(kept[:half]) / half, sum(kept[half:]) / (len(kept) - half)
    return abs(second - first) <= max(tolerance * max(abs(first), abs(second)), 1e-6)
