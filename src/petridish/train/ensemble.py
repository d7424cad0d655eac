"""Train K organisms of one architecture at once: one set of batched kernels instead of K small ones.

Tiny models on a CPU are overhead-bound (a step of the `nano` transformer is a few hundred small
kernels), so K of them trained together cost little more than one. Every member keeps its own
random draws, schedule and optimizer state, so its loss trajectory is the one the ordinary `train`
loop gives with the same seed and generators (tests/test_ensemble.py checks it to 1e-5):

- batches: member k draws its indices from its own generator, exactly as the solo loop does;
- parameters: the K models' parameters are rows of two leaf matrices (decayed, not decayed), split
  into named views each step, so clipping is a few kernels and AdamW is torch's fused AdamW over
  blocks of rows (one block for members that share a schedule);
- per member: lr, lr_min_ratio, warmup_steps, weight_decay and grad_clip may differ (they are
  per-row scalars); steps and batch_size are shared (they fix the tensors' shapes);
- a member whose loss becomes NaN stops with its reason, keeping the weights it had (as the solo
  loop does when it raises); the others go on.

The forward pass is hand-batched (`bmm`/`baddbmm`) for the two model classes of petridish and
`torch.func.vmap(functional_call)` for any other module; bench/run.py measures both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from petridish.config import TrainConfig
from petridish.data import Sequences
from petridish.models.mlp import PromptMLP
from petridish.models.transformer import Transformer, TransformerShape
from petridish.train.loop import Diverged, Logger, TrainResult, _progress, lr_factor, response_loss

Backend = Literal["auto", "batched", "vmap"]
LossFn = Callable[[dict[str, torch.Tensor], Sequences], torch.Tensor]
"""(named (K, ...) parameter views, stacked batch with (K, B, T) tensors) -> per-member loss (K,)."""

BETAS, EPS = (0.9, 0.98), 1e-8  # as make_optimizer in train/loop.py (eps is AdamW's default)
SHARED_FIELDS = ("steps", "batch_size")


@dataclass
class MemberResult(TrainResult):
    error: str | None = None
    """Why this member stopped early (its loss became NaN or infinite); None when it finished."""


# --------------------------------------------------------------------------------------------
# Parameters of K models as one matrix
# --------------------------------------------------------------------------------------------


class FlatParameters:
    """The trainable parameters of K same-shaped models as rows of two leaf matrices.

    `decayed` (K, Pd) holds the matrices that AdamW decays (as make_optimizer chooses them) and
    `rest` (K, Pr) the biases and gains, so each optimizer group is a contiguous block of memory.
    """

    def __init__(self, models: Sequence[nn.Module]):
        named = [[(n, p) for n, p in m.named_parameters() if p.requires_grad] for m in models]
        signature = [(n, tuple(p.shape)) for n, p in named[0]]
        for i, member in enumerate(named[1:], 1):
            if [(n, tuple(p.shape)) for n, p in member] != signature:
                raise ValueError(f"ensemble member {i} does not have member 0's parameters (names and shapes must match)")
        # Decay matrices only, as make_optimizer does: decaying biases and gains fights the normalisation.
        self.groups = [[(n, s) for n, s in signature if len(s) >= 2], [(n, s) for n, s in signature if len(s) < 2]]
        self.decayed, self.rest = (self._stack(named, {n for n, _ in group}) for group in self.groups)

    @staticmethod
    def _stack(named, names: set[str]) -> torch.Tensor:
        rows = [torch.cat([p.detach().reshape(-1) for n, p in member if n in names] or [torch.zeros(0)]) for member in named]
        return torch.stack(rows).requires_grad_()  # (K, P)

    @property
    def leaves(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decayed, self.rest

    def views(self) -> dict[str, torch.Tensor]:
        """Named (K, *shape) views; one split per leaf, so the backward is one concatenation each."""
        out = {}
        for leaf, group in zip(self.leaves, self.groups):
            pieces = leaf.split([math.prod(s) for _, s in group], dim=1)
            out.update({name: piece.unflatten(1, shape) for (name, shape), piece in zip(group, pieces)})
        return out

    @torch.no_grad()
    def write_back(self, k: int, model: nn.Module) -> None:
        """Copy member k's rows into `model`'s parameters."""
        params = dict(model.named_parameters())
        for name, view in self.views().items():
            params[name].copy_(view[k])


class StackedAdamW:
    """Per-member global-norm clipping, then torch's fused AdamW over blocks of rows.

    Members whose schedules agree (a seed sweep) share one block, so the update is two fused
    kernels whatever K is; members with their own lr or weight decay get their own blocks.
    """

    def __init__(self, params: FlatParameters, configs: Sequence[TrainConfig]):
        self.params, self.configs = params, list(configs)
        self.blocks = _blocks_of_equal_schedules(self.configs)
        self.max_norm = torch.tensor([c.grad_clip for c in configs]).unsqueeze(1)  # (K, 1)
        groups = []
        for a, b in self.blocks:  # detached row views share the leaves' memory, so the update lands there
            c = self.configs[a]
            groups.append({"params": [params.decayed.detach()[a:b]], "weight_decay": c.weight_decay})
            groups.append({"params": [params.rest.detach()[a:b]], "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=self.configs[0].lr, betas=BETAS, eps=EPS, fused=True)

    @torch.no_grad()
    def step(self, step: int) -> None:
        grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in self.params.leaves]
        self._clip(grads)
        for i, (a, b) in enumerate(self.blocks):
            c = self.configs[a]
            for group, grad in zip(self.optimizer.param_groups[2 * i : 2 * i + 2], grads):
                group["lr"] = c.lr * lr_factor(step, c)  # the solo loop's LambdaLR
                group["params"][0].grad = grad[a:b]
        self.optimizer.step()

    def _clip(self, grads: list[torch.Tensor]) -> None:
        # clip_grad_norm_ per member: scale by max_norm / (norm + 1e-6), never up; 0 disables.
        norms = torch.stack([torch.linalg.vector_norm(g, dim=1) for g in grads], 1).norm(dim=1, keepdim=True)  # (K, 1)
        scale = torch.where(self.max_norm > 0, (self.max_norm / (norms + 1e-6)).clamp(max=1.0), 1.0)
        for grad in grads:
            grad.mul_(scale)


def _blocks_of_equal_schedules(configs: list[TrainConfig]) -> list[tuple[int, int]]:
    """[(start, stop)] runs of consecutive members whose lr schedule and weight decay are identical."""
    key = lambda c: (c.lr, c.lr_min_ratio, c.warmup_steps, c.steps, c.weight_decay)  # noqa: E731
    starts = [0] + [k for k in range(1, len(configs)) if key(configs[k]) != key(configs[k - 1])]
    return list(zip(starts, starts[1:] + [len(configs)]))


# --------------------------------------------------------------------------------------------
# Batched forward passes: (views, stacked batch) -> per-member loss (K,)
# --------------------------------------------------------------------------------------------


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))  # (K, N, in) -> (K, N, out)


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(bias.unsqueeze(1), F.layer_norm(x, x.shape[-1:]), weight.unsqueeze(1))


def _masked_mean_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logits (K, B, T, V), targets and mask (K, B, T) -> mean cross-entropy over masked tokens, (K,)."""
    losses = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), reduction="none").view(targets.shape) * mask
    return losses.sum((1, 2)) / mask.sum((1, 2)).clamp(min=1)


def transformer_logits(p: dict[str, torch.Tensor], tokens: torch.Tensor, shape: TransformerShape) -> torch.Tensor:
    """The Transformer's forward for K members at once: tokens (K, B, T) -> logits (K, B, T, V)."""
    K, B, T = tokens.shape
    C, H = shape.d_model, shape.n_heads
    members = torch.arange(K).view(K, 1, 1)
    x = (p["embed.weight"][members, tokens] + p["pos_embed.weight"][:, None, :T]).view(K, B * T, C)
    for i in range(shape.n_layers):
        b = lambda name: p[f"blocks.{i}.{name}"]  # noqa: E731
        qkv = _linear(_layer_norm(x, b("ln1.weight"), b("ln1.bias")), b("attn.qkv.weight"), b("attn.qkv.bias"))
        q, k, v = qkv.view(K * B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)  # 3 x (KB, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(K, B * T, C)
        x = x + _linear(y, b("attn.out.weight"), b("attn.out.bias"))
        h = F.gelu(_linear(_layer_norm(x, b("ln2.weight"), b("ln2.bias")), b("mlp.fc.weight"), b("mlp.fc.bias")), approximate="tanh")
        x = x + _linear(h, b("mlp.proj.weight"), b("mlp.proj.bias"))
    x = _layer_norm(x, p["ln_final.weight"], p["ln_final.bias"])
    return _linear(x, p["unembed.weight"], p["unembed.bias"]).view(K, B, T, -1)


def _transformer_losses(shape: TransformerShape) -> LossFn:
    def losses(p: dict[str, torch.Tensor], batch: Sequences) -> torch.Tensor:
        logits = transformer_logits(p, batch.tokens[..., :-1], shape)  # position t predicts token t + 1
        return _masked_mean_ce(logits, batch.tokens[..., 1:], batch.target_mask[..., 1:])

    return losses


def _mlp_losses(model: PromptMLP) -> LossFn:
    P, R, V, depth = model.prompt_len, model.response_len, model.vocab_size, len(model.hidden)

    def losses(p: dict[str, torch.Tensor], batch: Sequences) -> torch.Tensor:
        K, B, T = batch.tokens.shape
        prompts, targets, mask = _mlp_targets(batch.tokens.flatten(0, 1), batch.target_mask.flatten(0, 1), batch.prompt_len.flatten(), R)
        x = F.one_hot(prompts[:, :P], V).float().view(K, B, P * V)
        for i in range(depth):
            x = F.relu(_linear(x, p[f"hidden.{i}.weight"], p[f"hidden.{i}.bias"]))
        logits = _linear(x, p["readout.weight"], p["readout.bias"]).view(K, B, R, V)
        return _masked_mean_ce(logits, targets.view(K, B, R), mask.view(K, B, R))

    return losses


def _mlp_targets(tokens: torch.Tensor, target_mask: torch.Tensor, prompt_len: torch.Tensor, R: int):
    """The prompt MLP's view of teacher-forced rows, as train/loop.py's `_mlp_view` builds it."""
    T = tokens.shape[1]
    position = prompt_len[:, None] + torch.arange(R)  # (N, R)
    index = position.clamp(max=T - 1)
    mask = target_mask.gather(1, index) & (position < T)
    prompts = tokens.masked_fill(torch.arange(T) >= prompt_len[:, None], 0)
    return prompts, tokens.gather(1, index), mask


class _LossOf(nn.Module):
    """`response_loss` of a model as a module, so functional_call can swap the model's parameters."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens, target_mask, prompt_len) -> torch.Tensor:
        return response_loss(self.model, Sequences(tokens, target_mask, prompt_len))


def _vmap_losses(model: nn.Module) -> LossFn:
    wrapper = _LossOf(model)

    def member(params, tokens, target_mask, prompt_len):
        return torch.func.functional_call(wrapper, params, (tokens, target_mask, prompt_len))

    batched = torch.func.vmap(member)

    def losses(p: dict[str, torch.Tensor], batch: Sequences) -> torch.Tensor:
        return batched({f"model.{k}": v for k, v in p.items()}, batch.tokens, batch.target_mask, batch.prompt_len)

    return losses


def member_losses(model: nn.Module, backend: Backend = "auto") -> LossFn:
    """The batched loss for models shaped like `model`: hand-batched where we have it, else vmap."""
    if backend == "vmap" or (backend == "auto" and not isinstance(model, (Transformer, PromptMLP))):
        return _vmap_losses(model)
    if isinstance(model, Transformer):
        return _transformer_losses(model.shape)
    if isinstance(model, PromptMLP):
        return _mlp_losses(model)
    raise ValueError(f"no hand-batched forward for {type(model).__name__}; use backend='vmap'")


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def stack_batches(datasets: Sequence[Sequences], index: Sequence[torch.Tensor]) -> Sequences:
    """Member k's rows `index[k]` of `datasets[k]`, stacked: (K, B, T) tensors."""
    if all(d is datasets[0] for d in datasets):
        return datasets[0].select(torch.stack(list(index)))  # one gather when members share the data
    rows = [d.select(i) for d, i in zip(datasets, index)]
    return Sequences(*(torch.stack(parts) for parts in zip(*((r.tokens, r.target_mask, r.prompt_len) for r in rows))))


def _per_member(value, K: int, what: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * K
    if len(values) != K:
        raise ValueError(f"{what}: expected one per member ({K}), got {len(values)}")
    return values


def check_members(configs: Sequence[TrainConfig]) -> None:
    """Members must agree on the fields that fix tensor shapes and the step count."""
    for name in SHARED_FIELDS:
        values = {getattr(c, name) for c in configs}
        if len(values) > 1:
            raise ValueError(f"ensemble members must share {name}; got {sorted(values)}")


def train_ensemble(
    models: Sequence[nn.Module],
    data: Sequences | Sequence[Sequences],
    configs: TrainConfig | Sequence[TrainConfig],
    generators: Sequence[torch.Generator],
    *,
    stage: str | Sequence[str] = "train",
    held_out: Sequences | Sequence[Sequences | None] | None = None,
    logs: Sequence[Logger | None] | None = None,
    progress: bool = False,
    backend: Backend = "auto",
) -> list[MemberResult]:
    """Train each `models[k]` in place as `train(models[k], data[k], configs[k], generators[k])` would.

    `data`, `configs`, `stage` and `held_out` are one for all or one per member; each member needs
    its own generator. Returns one MemberResult per member; a diverged member has `error` set.
    """
    K = len(models)
    if K == 0 or len(generators) != K:
        raise ValueError(f"expected one generator per model, got {len(generators)} for {K} models")
    configs, datasets = _per_member(configs, K, "configs"), _per_member(data, K, "data")
    check_members(configs)
    if len({d.tokens.shape[1] for d in datasets}) > 1:
        raise ValueError("data: every member's sequences must have the same length (one scenario)")
    stages = [stage] * K if isinstance(stage, str) else _per_member(stage, K, "stage")
    run = _EnsembleRun(models, configs, member_losses(models[0], backend), stages, _per_member(held_out, K, "held_out"), _per_member(logs, K, "logs"))
    steps, batch_size = configs[0].steps, configs[0].batch_size
    with _progress(progress, stages[0] if K == 1 else f"{stages[0]} (+{K - 1} members)", steps) as advance:
        for step in range(steps):
            index = [torch.randint(0, len(d), (batch_size,), generator=g) for d, g in zip(datasets, generators)]
            if not run.step(step, stack_batches(datasets, index)):
                break
            advance()
    run.finish()
    return run.results


class _EnsembleRun:
    """The state of one train_ensemble call: parameters, optimizer, who is still alive, results."""

    def __init__(self, models, configs, losses_fn: LossFn, stages: list[str], held_out: list, logs: list):
        self.models, self.configs, self.losses_fn, self.stages, self.logs = models, configs, losses_fn, stages, logs
        self.params = FlatParameters(models)
        self.optimizer = StackedAdamW(self.params, configs)
        self.alive = [True] * len(models)
        self.results = [MemberResult() for _ in models]
        self.held_out = held_out if all(h is not None for h in held_out) else None
        if self.held_out is None and any(h is not None for h in held_out):
            raise ValueError("held_out: give a set for every member or for none")
        if self.held_out is not None and len({tuple(h.tokens.shape) for h in self.held_out}) > 1:
            raise ValueError("held_out: every member's set must have the same shape (they are evaluated as one batch)")
        self._held_out_step, self._held_out_cache = -1, []

    def step(self, step: int, batch: Sequences) -> bool:
        """One optimizer step for every live member; False once none is left."""
        losses = self.losses_fn(self.params.views(), batch)  # (K,)
        values = losses.tolist()
        for k, value in enumerate(values):
            if self.alive[k] and not math.isfinite(value):
                self._stop(k, f"{self.stages[k]}: loss became {value} at step {step}")
        if not any(self.alive):
            return False
        for leaf in self.params.leaves:
            leaf.grad = None
        live = torch.tensor(self.alive)
        torch.where(live, losses, 0.0).sum().backward()  # members' parameters are disjoint: one backward
        self.optimizer.step(step)
        for k in (k for k in range(len(values)) if self.alive[k]):
            self.results[k].losses.append(values[k])
            c = self.configs[k]
            if (step + 1) % c.eval_every == 0 or step + 1 == c.steps:
                self._evaluate(k, step + 1, values[k])
        return True

    def _stop(self, k: int, reason: str) -> None:
        # Keep the weights the member had when its loss went bad, as the solo loop does by raising.
        self.alive[k] = False
        self.results[k].error = reason
        self.params.write_back(k, self.models[k])

    def _evaluate(self, k: int, step: int, loss: float) -> None:
        record = {"stage": self.stages[k], "step": step, "loss": loss}
        if self.held_out is not None:
            record["held_out_loss"] = self._held_out_losses(step)[k]
            self.results[k].held_out.append((step, record["held_out_loss"]))
        if self.logs[k] is not None:
            self.logs[k](record)

    def _held_out_losses(self, step: int) -> list[float]:
        # One batched evaluation per step, shared by the members that log at it.
        if self._held_out_step != step:
            with torch.no_grad():
                batch = stack_batches(self.held_out, [torch.arange(len(h)) for h in self.held_out])
                self._held_out_cache = self.losses_fn(self.params.views(), batch).tolist()
            self._held_out_step = step
        return self._held_out_cache

    def finish(self) -> None:
        for k, model in enumerate(self.models):
            if self.alive[k]:
                self.params.write_back(k, model)


def train_together(models: Sequence[nn.Module], data, config, generators, **kwargs) -> list[MemberResult]:
    """`train_ensemble`, failing the run as the solo loop does when any member's loss goes bad."""
    results = train_ensemble(models, data, config, generators, **kwargs)
    failed = next((r.error for r in results if r.error), None)
    if failed is not None:
        raise Diverged(failed)
    return results
