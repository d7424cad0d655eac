"""`constrained`: training under a loss bound or a complexity budget (the two dual problems).

- `min_norm_at_loss`: minimise |theta|^2 / 2 subject to L(theta) <= eps, by gradient descent-ascent on
  the Lagrangian |theta|^2 / 2 + mu (L(theta) - eps): Adam descends in theta, and mu = exp(nu) ascends by
  nu += multiplier_lr * clip((L_batch - eps) / eps, -1, 1) (exponentiated-gradient ascent, so mu stays
  positive and moves across orders of magnitude in a few hundred steps; it is capped at multiplier_max). The constraint is enforced on
  the whole training set: every `eval_every` steps the full loss is measured, and the returned weights
  are the smallest-norm evaluated point with full loss <= eps (or the last point, marked infeasible).
- `least_loss_in_ball`: minimise L(theta) subject to |theta| <= radius, by Adam with a projection onto
  the ball after every step; returns the least full training loss seen.
- `equal_loss_minimum`: a true local minimum of a loss whose minimum is the same for every labelling,
  at which the LLC is defined and comparable (see its docstring).

Width and depth budgets need no procedure: they are a choice of model (see `experiments.dual`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from petridish.config import TrainConfig, require
from petridish.data import Sequences
from petridish.models.loss import dataset_loss, param_norm, response_logits, response_loss
from petridish.train.engine import Ensemble, Logger, per_member, stack, train_together


@dataclass(frozen=True)
class LagrangianConfig:
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=1500, weight_decay=0.0, grad_clip=0.0, eval_every=25)
    )
    """Adam on theta: steps, batch, lr schedule. weight_decay and grad_clip are set to 0 whatever the
    recipe says: the norm is the objective, and Adam's step is already invariant to the objective's
    scale, which mu changes."""
    multiplier_init: float = 1.0
    """Initial Lagrange multiplier mu."""
    multiplier_lr: float = 0.05
    """Step of the ascent on log mu per optimizer step."""
    multiplier_max: float = 1e8
    """Cap on mu. Past it the norm term no longer steers anything, and an uncapped mu runs away while
    eps is out of reach (1e21 was seen), where mu * grad squared nears float32's limit in Adam's state."""

    def __post_init__(self):
        # Plain Adam reads neither: a recipe's `[lagrangian.train]` table (built on TrainConfig's own
        # defaults) must not carry them into the run's id.
        object.__setattr__(self, "train", dataclasses.replace(self.train, weight_decay=0.0, grad_clip=0.0))
        require(self.multiplier_init > 0, "multiplier_init", "a number > 0", self.multiplier_init)
        require(self.multiplier_lr > 0, "multiplier_lr", "a number > 0", self.multiplier_lr)
        require(
            self.multiplier_max >= self.multiplier_init,
            "multiplier_max",
            f"a number >= multiplier_init ({self.multiplier_init})",
            self.multiplier_max,
        )


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


def _adam(config: TrainConfig, clip: bool) -> TrainConfig:
    # Plain Adam: AdamW without decay (the norm is the objective, or the ball bounds it).
    return dataclasses.replace(config, weight_decay=0.0, grad_clip=config.grad_clip if clip else 0.0)


class Lagrangian:
    """The engine's objective for `min_norm_at_loss`: |theta|^2 / 2 + mu_k (L - eps), one mu per member."""

    def __init__(self, K: int, eps: float, config: LagrangianConfig):
        self.eps, self.config = eps, config
        self.log_mu = torch.full((K,), math.log(config.multiplier_init), dtype=torch.float64)

    def batch(self, run: Ensemble, draws: list[Sequences]):
        return stack(draws), self.log_mu[run.offset : run.offset + run.K].exp().float()

    def loss(self, model, params, batch):
        data, mu = batch
        loss = response_loss(model, data)
        norm2 = sum(p.pow(2).sum() for p in params.values())
        return 0.5 * norm2 + mu * loss, {"data_loss": loss}

    def after_step(self, run: Ensemble, step: int, losses: torch.Tensor, extras: dict[str, torch.Tensor]) -> None:
        # Exponentiated-gradient ascent on mu, capped (see LagrangianConfig.multiplier_max).
        violation = ((extras["data_loss"].double() - self.eps) / self.eps).clamp(-1.0, 1.0)
        mine = slice(run.offset, run.offset + run.K)  # this chunk's members
        self.log_mu[mine] = (self.log_mu[mine] + self.config.multiplier_lr * violation).clamp(
            max=math.log(self.config.multiplier_max)
        )

    def after_eval(self, run: Ensemble, step: int, records: list[dict | None]) -> None:
        for k, record in enumerate(records):
            if record is not None:
                record["multiplier"] = math.exp(float(self.log_mu[run.offset + k]))


class _KeepBest:
    """Keeps each member's best evaluated point: the least norm with full loss <= eps (`eps` given),
    or the least full loss (`eps` None); logs the full loss and the norm at every evaluation."""

    def __init__(
        self, models: Sequence[nn.Module], eps: float | None, stage_logs: Sequence[Logger | None], extra: Sequence[dict]
    ):
        self.eps, self.logs, self.extra = eps, stage_logs, extra
        self.best: list[dict[str, torch.Tensor] | None] = [None] * len(models)
        self.score = [math.inf] * len(models)

    def after_step(self, run, step, losses, extras) -> None:
        pass

    def after_eval(self, run: Ensemble, step: int, records: list[dict | None]) -> None:
        norms = run.params.norms().tolist()
        views = None
        for k, record in enumerate(records):
            if record is None:
                continue
            member = run.offset + k  # its index in the whole call (chunks)
            full = record["held_out_loss"]
            score = norms[k] if self.eps is not None else full
            if (self.eps is None or full <= self.eps) and score < self.score[member]:
                views = views or run.params.views()
                self.best[member], self.score[member] = {n: v[k].detach().clone() for n, v in views.items()}, score
            log = self.logs[member]
            if log is not None:
                log(
                    {
                        "stage": record["stage"],
                        "step": step,
                        "loss": full,
                        "param_norm": norms[k],
                        **self.extra[member],
                        **({"multiplier": record["multiplier"]} if "multiplier" in record else {}),
                    }
                )

    def restore(self, k: int, model: nn.Module) -> None:
        best = self.best[k]
        if best is not None:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in best.items():
                    params[name].copy_(value)


def min_norm_at_loss(
    models: Sequence[nn.Module],
    data: Sequences | Sequence[Sequences],
    eps: float,
    config: LagrangianConfig,
    generators: Sequence[torch.Generator],
    *,
    stage: str | Sequence[str] = "lagrangian",
    logs: Sequence[Logger | None] | None = None,
) -> list[ConstrainedResult]:
    """Train each model in place towards the least-norm weights with full training loss <= eps."""
    K = len(models)
    datasets: list[Sequences] = per_member(data, K, "data")
    objective, keep = Lagrangian(K, eps, config), _KeepBest(models, eps, list(logs or [None] * K), [{}] * K)
    train_together(
        models,
        datasets,
        _adam(config.train, clip=False),
        generators,
        objective=objective,
        stage=stage,
        held_out=datasets,
        hooks=(objective, keep),
    )
    results = []
    for k, model in enumerate(models):
        keep.restore(k, model)
        full = dataset_loss(model, datasets[k])
        results.append(ConstrainedResult(full, param_norm(model), full <= eps, math.exp(float(objective.log_mu[k]))))
    return results


@torch.no_grad()
def project_to_ball(model: torch.nn.Module, radius: float) -> None:
    """Scale all parameters down together so that their joint L2 norm is at most `radius`."""
    norm = param_norm(model)
    if norm > radius:
        for p in model.parameters():
            p.mul_(radius / norm)


class _Projection:
    """After every step, scale each member back into its ball (radii (K,))."""

    def __init__(self, radii: Sequence[float]):
        self.radii = torch.tensor(list(radii), dtype=torch.float32)

    def after_step(self, run: Ensemble, step: int, losses, extras) -> None:
        norms, radii = run.params.norms(), self.radii[run.offset : run.offset + run.K]
        run.params.scale_(torch.where(norms > radii, radii / norms, torch.ones_like(norms)))

    def after_eval(self, run, step, records) -> None:
        pass


def least_loss_in_ball(
    models: Sequence[nn.Module],
    data: Sequences | Sequence[Sequences],
    radii: Sequence[float],
    config: TrainConfig,
    generators: Sequence[torch.Generator],
    *,
    stage: str | Sequence[str] = "ball",
    logs: Sequence[Logger | None] | None = None,
) -> list[ConstrainedResult]:
    """Projected Adam inside each member's L2 ball; each model ends at its least-loss evaluated point.
    The parameter norm here is that of the trainable parameters, which for petridish's models is all of them."""
    K = len(models)
    datasets: list[Sequences] = per_member(data, K, "data")
    for model, radius in zip(models, radii):
        project_to_ball(model, radius)
    keep = _KeepBest(models, None, list(logs or [None] * K), [{"radius": r} for r in radii])
    keep.score = [dataset_loss(m, d) for m, d in zip(models, datasets)]
    keep.best = [{n: p.detach().clone() for n, p in m.named_parameters()} for m in models]
    train_together(
        models,
        datasets,
        _adam(config, clip=True),
        generators,
        stage=stage,
        held_out=datasets,
        hooks=(_Projection(radii), keep),
    )
    results = []
    for k, (model, radius) in enumerate(zip(models, radii)):
        keep.restore(k, model)
        results.append(ConstrainedResult(keep.score[k], param_norm(model), param_norm(model) <= radius * (1 + 1e-5)))
    return results


# --- the equal-loss minimum -----------------------------------------------------------------------


@dataclass(frozen=True)
class MinimumConfig:
    smoothing: float = 0.1
    """alpha: each response token's target is (1 - alpha) on the labelled token + alpha / V on every token."""
    max_iter: int = 300
    """L-BFGS iterations on the full training set (each a few loss evaluations)."""
    grad_tolerance: float = 1e-2
    """Stationary when the full gradient's norm |g| is at most this. A residual gradient biases the LLC by
    at most about n_beta^2 |g|^2 / gamma (the chain's drift downhill in a flat direction): below 0.01 at
    the dual recipe's n_beta ~ 100 and gamma = 300."""
    loss_tolerance: float = 0.03
    """Equal loss when the smoothed loss exceeds its floor H(q) by at most this (nats per response token)."""

    def __post_init__(self):
        require(0 < self.smoothing < 1, "smoothing", "a number in (0, 1)", self.smoothing)
        require(self.max_iter >= 1, "max_iter", "an integer >= 1", self.max_iter)
        require(self.grad_tolerance > 0, "grad_tolerance", "a number > 0", self.grad_tolerance)
        require(self.loss_tolerance > 0, "loss_tolerance", "a number > 0", self.loss_tolerance)


@dataclass(frozen=True)
class MinimumResult:
    loss: float
    """Smoothed training loss at the returned weights."""
    floor: float
    """H(q): the least smoothed loss any network can reach, the same for every labelling."""
    grad_norm: float
    """Norm of the smoothed loss's full gradient there."""
    stationary: bool
    """grad_norm <= grad_tolerance."""
    equal: bool
    """loss - floor <= loss_tolerance."""


def smoothed_loss(model: nn.Module, batch: Sequences, smoothing: float) -> torch.Tensor:
    """Cross-entropy on the response tokens against the smoothed targets (mean over tokens)."""
    logits, targets, mask = response_logits(model, batch)
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", label_smoothing=smoothing)
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def smoothed_floor(vocab_size: int, smoothing: float) -> float:
    """H(q) of q = (1 - alpha) one-hot + alpha / V: the smoothed loss of a network that predicts q exactly."""
    top, rest = 1 - smoothing + smoothing / vocab_size, smoothing / vocab_size
    return -(top * math.log(top) + (vocab_size - 1) * rest * math.log(rest))


def equal_loss_minimum(model: nn.Module, data: Sequences, config: MinimumConfig) -> MinimumResult:
    """Move `model` in place to a local minimum of the label-smoothed training loss, by full-batch L-BFGS.

    Why this point: with hard labels a network that fits its labelling has no minimum (the loss falls
    towards 0 as the logits grow), so where training stops sets both the loss and the LLC (both near 0
    for every labelling). The smoothed loss is the expected log-loss when each label is replaced by a
    uniform token with probability alpha; its minimum is finite, it is a true minimum (gradient 0), and
    wherever the network can express q exactly that minimum is H(q) for every labelling: the truth is
    realisable and the smoothed loss minus H(q) is the KL divergence that singular learning theory's
    LLC is defined on. What it assumes: that the network can express q on every row (realisability).
    Where it cannot, the minimum lies above H(q) by a labelling-dependent amount; `equal` reports it.
    L-BFGS, not the training engine's Adam: minibatch Adam hovers with a gradient of order its noise,
    and this point needs the full gradient near 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.LBFGS(
        params,
        max_iter=config.max_iter,
        history_size=50,
        tolerance_grad=config.grad_tolerance / 100,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = smoothed_loss(model, data, config.smoothing)
        loss.backward()
        return loss

    optimizer.step(closure)
    optimizer.zero_grad(set_to_none=True)
    loss = smoothed_loss(model, data, config.smoothing)
    grad_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in torch.autograd.grad(loss, params)))
    vocab_size = response_logits(model, data.select(torch.arange(1)))[0].shape[-1]
    value, floor = float(loss.detach()), smoothed_floor(vocab_size, config.smoothing)
    return MinimumResult(
        value, floor, grad_norm, grad_norm <= config.grad_tolerance, value - floor <= config.loss_tolerance
    )
