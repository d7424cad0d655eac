"""`constrained`: training under a loss bound or a complexity budget (the two dual problems).

- `min_norm_at_loss`: minimise |theta|^2 / 2 subject to L(theta) <= eps, by gradient descent-ascent on
  the Lagrangian |theta|^2 / 2 + mu (L(theta) - eps): Adam descends in theta, and mu = exp(nu) ascends by
  nu += multiplier_lr * clip((L_batch - eps) / eps, -1, 1) (exponentiated-gradient ascent, so mu stays
  positive and moves across orders of magnitude in a few hundred steps; it is capped at multiplier_max). The constraint is enforced on
  the whole training set: every `eval_every` steps the full loss is measured, and the returned weights
  are the smallest-norm evaluated point with full loss <= eps (or the last point, marked infeasible).
- `least_loss_in_ball`: minimise L(theta) subject to |theta| <= radius, by Adam with a projection onto
  the ball after every step; returns the least full training loss seen.

Width and depth budgets need no procedure: they are a choice of model (see `experiments.dual`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from petridish.config import TrainConfig, require
from petridish.data import Sequences
from petridish.measures.complexity import dataset_loss, param_norm
from petridish.train.loop import Diverged, Logger, lr_factor, response_loss


@dataclass(frozen=True)
class LagrangianConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500, weight_decay=0.0, eval_every=25))
    """Adam on theta: steps, batch, lr schedule (weight_decay and grad_clip are unused: the norm is the
    objective, and Adam's step is already invariant to the objective's scale, which mu changes)."""
    multiplier_init: float = 1.0
    """Initial Lagrange multiplier mu."""
    multiplier_lr: float = 0.05
    """Step of the ascent on log mu per optimizer step."""
    multiplier_max: float = 1e8
    """Cap on mu. Past it the norm term no longer steers anything, and an uncapped mu runs away while
    eps is out of reach (1e21 was seen), where mu * grad squared nears float32's limit in Adam's state."""

    def __post_init__(self):
        require(self.multiplier_init > 0, "multiplier_init", "a number > 0", self.multiplier_init)
        require(self.multiplier_lr > 0, "multiplier_lr", "a number > 0", self.multiplier_lr)
        require(self.multiplier_max >= self.multiplier_init, "multiplier_max", f"a number >= multiplier_init ({self.multiplier_init})", self.multiplier_max)


@dataclass(frozen=True)
class ConstrainedResult:
    loss: float
    """Full training loss of the returned weights."""
    norm: float
    """Parameter L2 norm of the returned weights."""
    feasible: bool
    """Whether the returned weights satisfy the constraint (loss <= eps, or norm <= radius)."""
    multiplier: float = float("nan")
    """Final Lagrange multiplier (min_norm_at_loss only)."""


def _adam(model: torch.nn.Module, config: TrainConfig):
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))


def _batch(data: Sequences, config: TrainConfig, generator: torch.Generator) -> Sequences:
    return data.select(torch.randint(0, len(data), (config.batch_size,), generator=generator))


def _check(loss: torch.Tensor, stage: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise Diverged(f"{stage}: loss became {loss.item()} at step {step}")


def min_norm_at_loss(model: torch.nn.Module, data: Sequences, eps: float, config: LagrangianConfig, generator: torch.Generator,
                     *, stage: str = "lagrangian", log: Logger | None = None) -> ConstrainedResult:
    """Train `model` in place towards the least-norm weights with full training loss <= eps."""
    optimizer, schedule = _adam(model, config.train)
    log_mu, best, best_norm = math.log(config.multiplier_init), None, math.inf
    for step in range(config.train.steps):
        loss = response_loss(model, _batch(data, config.train, generator))
        _check(loss, stage, step)
        mu = math.exp(log_mu)
        objective = 0.5 * sum(p.pow(2).sum() for p in model.parameters()) + mu * loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        schedule.step()
        log_mu = min(log_mu + config.multiplier_lr * max(-1.0, min(1.0, (loss.item() - eps) / eps)), math.log(config.multiplier_max))
        if (step + 1) % config.train.eval_every == 0 or step + 1 == config.train.steps:
            full, norm = dataset_loss(model, data), param_norm(model)
            if full <= eps and norm < best_norm:
                best, best_norm = copy.deepcopy(model.state_dict()), norm
            if log is not None:
                log({"stage": stage, "step": step + 1, "loss": full, "param_norm": norm, "multiplier": math.exp(log_mu)})
    if best is not None:
        model.load_state_dict(best)
    full = dataset_loss(model, data)
    return ConstrainedResult(full, param_norm(model), full <= eps, math.exp(log_mu))


@torch.no_grad()
def project_to_ball(model: torch.nn.Module, radius: float) -> None:
    """Scale all parameters down together so that their joint L2 norm is at most `radius`."""
    norm = param_norm(model)
    if norm > radius:
        for p in model.parameters():
            p.mul_(radius / norm)


def least_loss_in_ball(model: torch.nn.Module, data: Sequences, radius: float, config: TrainConfig, generator: torch.Generator,
                       *, stage: str = "ball", log: Logger | None = None) -> ConstrainedResult:
    """Projected Adam inside the L2 ball of `radius`; the model ends at the least-loss evaluated point."""
    optimizer, schedule = _adam(model, config)
    project_to_ball(model, radius)
    best, best_loss = copy.deepcopy(model.state_dict()), dataset_loss(model, data)
    for step in range(config.steps):
        loss = response_loss(model, _batch(data, config, generator))
        _check(loss, stage, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        project_to_ball(model, radius)
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            full = dataset_loss(model, data)
            if full < best_loss:
                best, best_loss = copy.deepcopy(model.state_dict()), full
            if log is not None:
                log({"stage": stage, "step": step + 1, "loss": full, "radius": radius})
    model.load_state_dict(best)
    return ConstrainedResult(best_loss, param_norm(model), param_norm(model) <= radius * (1 + 1e-5))
