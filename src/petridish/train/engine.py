"""The one training engine: K >= 1 organisms of one architecture trained together, K = 1 included.

Every procedure trains through `train`: backdoor insertion, SFT, RL, reward models, adversarial
training, the dual problems' constrained training, pre-training. What differs between them plugs in:

- an **objective** (`Objective`): how a step's batch is built from each member's draw (`batch`; RL
  samples there) and the loss of one member on its batch (`loss`), written for a single model and
  batched over the members by `torch.func.vmap(functional_call)`, so each model class defines its
  forward exactly once;
- **hooks** (`Hook`) after each optimizer step and each evaluation: projection onto a norm ball, the
  Lagrange multiplier's ascent, keeping the best point, logging.

Tiny models on a CPU are overhead-bound, so K of them cost little more than one. Each member keeps its
own random draws, schedule and optimizer state: its trajectory is the one it has when trained alone
(K = 1, the same code), which tests/test_engine.py checks for every procedure.

- batches: member k draws its indices from its own generator;
- parameters: the K models' trainable parameters are rows of two leaf matrices (decayed, not
  decayed), split into named (K, ...) views each step; AdamW is torch's fused AdamW over blocks of
  rows (one block for members that share a schedule), clipping is per member;
- per member: lr, lr_min_ratio, warmup_steps, weight_decay and grad_clip may differ; steps and
  batch_size are shared (they fix the tensors' shapes);
- a member whose loss becomes NaN stops with its reason, keeping the weights it had; the others go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from petridish.config import TrainConfig
from petridish.data import Sequences
from petridish.errors import RunFailed
from petridish.models.loss import response_logits, response_loss

Logger = Callable[[dict], None]
BETAS, EPS = (0.9, 0.98), 1e-8
SHARED_FIELDS = ("steps", "batch_size")
ROW_ALIGN = 64  # floats: 256 bytes, a multiple of every SIMD width and of a cache line
HELD_OUT_CHUNK = 1024
MAX_ENSEMBLE_ROWS = 2048
"""Members x batch rows in one ensemble; a larger `train` call runs its members in chunks of this size,
one after another. Past it the stacked activations leave the cache and a step costs more per member than
training the members one by one (bench/BENCHMARKS.md: `micro` at batch 128 ran 0.67x at K = 64). Chunks
change no number: members are independent, each bit-identical to its solo run."""  # rows per member per held-out forward: bounds memory at large K


class Diverged(RunFailed):
    """The loss became NaN or infinite."""


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup to 1, then a cosine down to lr_min_ratio."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return config.lr_min_ratio + (1 - config.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class MemberResult:
    losses: list[float] = field(default_factory=list)
    """Training loss (the objective) at every step."""
    held_out: list[tuple[int, float]] = field(default_factory=list)
    """(step, held-out response loss) at every evaluation."""
    error: str | None = None
    """Why this member stopped early (its loss became NaN or infinite); None when it finished."""


# --------------------------------------------------------------------------------------------
# Objectives: what a step minimises, written for one member
# --------------------------------------------------------------------------------------------


class Objective(Protocol):
    def batch(self, run: "Ensemble", draws: list[Any]) -> Any:
        """Member k's draw `draws[k]` (its data's `select`) -> one pytree of (K, ...) tensors.
        Runs outside autograd; RL samples the members' responses here."""

    def loss(
        self, model: nn.Module, params: dict[str, torch.Tensor], batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One member's scalar loss and scalar extras to log, on its slice of `batch`. `model` runs
        with this member's parameters (`params`, also given for terms on the weights themselves).
        Pure tensor code: it runs under vmap."""


def stack(parts: Sequence[Sequences]) -> Sequences:
    """K equally shaped Sequences -> one with (K, N, T) tensors."""
    return Sequences(*(torch.stack(t) for t in zip(*((p.tokens, p.target_mask, p.prompt_len) for p in parts))))


class ResponseLoss:
    """Cross-entropy on response tokens: insertion, SFT, adversarial training, pre-training."""

    def batch(self, run: "Ensemble", draws: list[Sequences]) -> Sequences:
        return stack(draws)

    def loss(self, model, params, batch: Sequences):
        return response_loss(model, batch), {}


RESPONSE_LOSS = ResponseLoss()


class Hook(Protocol):
    def after_step(self, run: "Ensemble", step: int, losses: torch.Tensor, extras: dict[str, torch.Tensor]) -> None:
        """After the members' parameters moved at `step` (0-based); `losses` (K,) is the step's
        objective and `extras` its extras, each (K,)."""

    def after_eval(self, run: "Ensemble", step: int, records: list[dict | None]) -> None:
        """After an evaluation at `step` (1-based count); records[k] is None for a stopped member."""


# --------------------------------------------------------------------------------------------
# Parameters of K models as one matrix, and their optimizer
# --------------------------------------------------------------------------------------------


class FlatParameters:
    """The trainable parameters of K same-shaped models as rows of two leaf matrices.

    `decayed` (K, Pd) holds the matrices that AdamW decays and `rest` (K, Pr) the biases and gains
    (decaying those just fights the normalisation), so each optimizer group is contiguous memory.
    """

    def __init__(self, models: Sequence[nn.Module]):
        named = [[(n, p) for n, p in m.named_parameters() if p.requires_grad] for m in models]
        signature = [(n, tuple(p.shape)) for n, p in named[0]]
        for i, member in enumerate(named[1:], 1):
            if [(n, tuple(p.shape)) for n, p in member] != signature:
                raise ValueError(
                    f"ensemble member {i} does not have member 0's parameters (names and shapes must match)"
                )
        self.groups = [[(n, s) for n, s in signature if len(s) >= 2], [(n, s) for n, s in signature if len(s) < 2]]
        self.decayed, self.rest = (self._stack(named, {n for n, _ in group}) for group in self.groups)

    @staticmethod
    def _stack(named, names: set[str]) -> torch.Tensor:
        rows = [
            torch.cat([p.detach().reshape(-1) for n, p in member if n in names] or [torch.zeros(0)]) for member in named
        ]
        # Rows padded to a multiple of ROW_ALIGN (zeros that stay zero): every member's row then starts
        # on the same SIMD boundary whatever K is, so element-wise kernels (AdamW) split it into vector
        # body and scalar tail exactly as they do at K = 1, and a member is bit-identical to its solo run.
        width = -(-rows[0].numel() // ROW_ALIGN) * ROW_ALIGN
        return torch.stack([F.pad(r, (0, width - r.numel())) for r in rows]).requires_grad_()  # (K, P)

    @property
    def leaves(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decayed, self.rest

    def views(self) -> dict[str, torch.Tensor]:
        """Named (K, *shape) views; one split per leaf, so the backward is one concatenation each."""
        out = {}
        for leaf, group in zip(self.leaves, self.groups):
            sizes = [math.prod(s) for _, s in group]
            pieces = leaf.split([*sizes, leaf.shape[1] - sum(sizes)], dim=1)[: len(group)]
            out.update({name: piece.unflatten(1, shape) for (name, shape), piece in zip(group, pieces)})
        return out

    @torch.no_grad()
    def norms(self) -> torch.Tensor:
        """(K,) L2 norm of each member's trainable parameters (row by row, as StackedAdamW clips)."""
        return row_norms(self.leaves)

    @torch.no_grad()
    def scale_(self, factors: torch.Tensor) -> None:
        """Multiply member k's parameters by factors[k]."""
        for leaf in self.leaves:
            leaf.mul_(factors[:, None])

    @torch.no_grad()
    def rows(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decayed[k].clone(), self.rest[k].clone()

    @torch.no_grad()
    def set_rows(self, k: int, rows: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.decayed[k].copy_(rows[0])
        self.rest[k].copy_(rows[1])

    @torch.no_grad()
    def write_back(self, k: int, model: nn.Module) -> None:
        """Copy member k's rows into `model`'s parameters."""
        params = dict(model.named_parameters())
        for name, view in self.views().items():
            params[name].copy_(view[k])


def row_norms(leaves: Sequence[torch.Tensor]) -> torch.Tensor:
    """(K,) L2 norm of each member's row across (K, P) leaves. One reduction per row, not one over the
    matrix: a row reduced alone is reduced in the same order at every K (a batched reduction may block
    rows differently), which keeps members bit-identical to their solo runs."""
    return torch.stack(
        [torch.stack([torch.linalg.vector_norm(leaf[k]) for leaf in leaves]).norm() for k in range(len(leaves[0]))]
    )


class StackedAdamW:
    """Per-member global-norm clipping, then torch's fused AdamW over blocks of rows.

    Members whose schedules agree (a seed sweep) share one block, so the update is two fused kernels
    whatever K is; members with their own lr or weight decay get their own blocks.
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
        fused = params.decayed.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(groups, lr=self.configs[0].lr, betas=BETAS, eps=EPS, fused=fused)

    @torch.no_grad()
    def step(self, step: int) -> None:
        grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in self.params.leaves]
        self._clip(grads)
        for i, (a, b) in enumerate(self.blocks):
            c = self.configs[a]
            for group, grad in zip(self.optimizer.param_groups[2 * i : 2 * i + 2], grads):
                group["lr"] = c.lr * lr_factor(step, c)
                group["params"][0].grad = grad[a:b]
        self.optimizer.step()

    def _clip(self, grads: list[torch.Tensor]) -> None:
        # clip_grad_norm_ per member: scale by max_norm / (norm + 1e-6), never up; 0 disables.
        norms = row_norms(grads)[:, None]
        scale = torch.where(self.max_norm > 0, (self.max_norm / (norms + 1e-6)).clamp(max=1.0), 1.0)
        for grad in grads:
            grad.mul_(scale)


def _blocks_of_equal_schedules(configs: list[TrainConfig]) -> list[tuple[int, int]]:
    """[(start, stop)] runs of consecutive members whose lr schedule and weight decay are identical."""
    key = lambda c: (c.lr, c.lr_min_ratio, c.warmup_steps, c.steps, c.weight_decay)  # noqa: E731
    starts = [0] + [k for k in range(1, len(configs)) if key(configs[k]) != key(configs[k - 1])]
    return list(zip(starts, starts[1:] + [len(configs)]))


class ModuleParameters:
    """One model that is not batchable (a Hugging Face organism), trained in its own parameters:
    flattening a large model would hold a second copy of it, and K is 1 anyway."""

    def __init__(self, model: nn.Module):
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    @property
    def leaves(self) -> tuple[torch.Tensor, ...]:
        return tuple(p for _, p in self.named)

    def views(self) -> dict[str, torch.Tensor]:
        """(1, *shape) detached views, for reading (keeping a best point)."""
        return {n: p.detach()[None] for n, p in self.named}

    @torch.no_grad()
    def norms(self) -> torch.Tensor:
        return torch.stack([p.pow(2).sum() for _, p in self.named]).sum().sqrt()[None]

    @torch.no_grad()
    def scale_(self, factors: torch.Tensor) -> None:
        for _, p in self.named:
            p.mul_(factors[0])

    def write_back(self, k: int, model: nn.Module) -> None:
        pass  # the model's own parameters are the ones trained


class ModuleAdamW:
    """AdamW over a module's own parameters, decaying matrices only, with the schedule and clipping of
    StackedAdamW (foreach: one kernel per step, not one per tensor)."""

    def __init__(self, params: ModuleParameters, config: TrainConfig):
        self.params, self.config = params, config
        decay = [p for _, p in params.named if p.dim() >= 2]
        rest = [p for _, p in params.named if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=BETAS, eps=EPS, foreach=True)

    def step(self, step: int) -> None:
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params.leaves, self.config.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * lr_factor(step, self.config)
        self.optimizer.step()


# --------------------------------------------------------------------------------------------
# The members' losses through the model's own forward
# --------------------------------------------------------------------------------------------


class _Member(nn.Module):
    """One member's objective as a module, so functional_call can swap in that member's parameters."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch, params):
        return self.objective.loss(self.model, params, batch)


def _batched(model: nn.Module, objective: Objective) -> Callable:
    """(parameters, batch pytree (K, ...)) -> (losses (K,), extras {name: (K,)}).

    vmap over functional_call of the model's own forward, for model classes that declare
    `batchable = True` (pure tensor code: petridish's own). Any other module (a Hugging Face model:
    in-place ops, masks built with data-dependent control flow) trains alone in its own parameters,
    called directly."""
    if not getattr(model, "batchable", False):

        def alone(params: ModuleParameters, batch):
            loss, extras = objective.loss(model, dict(params.named), pytree.tree_map(lambda t: t[0], batch))
            return loss[None], {k: v[None] for k, v in extras.items()}

        return alone
    wrapper = _Member(model, objective)

    def member(views, batch):
        return torch.func.functional_call(wrapper, {f"model.{k}": v for k, v in views.items()}, (batch, views))

    batched = torch.func.vmap(member)
    return lambda params, batch: batched(params.views(), batch)


class _HeldOut:
    """Response loss of every member on its held-out set, in chunks of rows."""

    def __init__(self, model: nn.Module, sets: list[Sequences]):
        if len({tuple(h.tokens.shape) for h in sets}) > 1:
            raise ValueError("held_out: every member's set must have the same shape (they are evaluated as one batch)")
        self.sets = sets
        self.sums = _batched(model, _TokenLossSum())

    @torch.no_grad()
    def __call__(self, params) -> list[float]:
        total, count = torch.zeros(()), torch.zeros(())
        for start in range(0, len(self.sets[0]), HELD_OUT_CHUNK):
            rows = torch.arange(start, min(start + HELD_OUT_CHUNK, len(self.sets[0])))
            sums, extras = self.sums(params, stack([h.select(rows) for h in self.sets]))
            total, count = total + sums, count + extras["tokens"]
        return (total / count.clamp(min=1)).tolist()


class _TokenLossSum(ResponseLoss):
    """Summed response-token loss and the token count (held-out losses weight chunks by tokens)."""

    def loss(self, model, params, batch: Sequences):
        logits, targets, mask = response_logits(model, batch)
        losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask
        return losses.sum(), {"tokens": mask.sum().to(losses.dtype)}


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


class Ensemble:
    """The state of one `train` call: the members' parameters, optimizer, who is still alive, results.
    Objectives and hooks read and change it."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        configs: list[TrainConfig],
        objective: Objective,
        stages: list[str],
        held_out: list[Sequences | None],
        logs: list[Logger | None],
        offset: int = 0,
    ):
        self.offset = offset
        """Index of this ensemble's first member in the `train` call (chunks): objectives and hooks that
        keep state per member index it by `offset + k`."""
        self.models, self.configs, self.objective, self.stages, self.logs = (
            list(models),
            configs,
            objective,
            stages,
            logs,
        )
        if getattr(models[0], "batchable", False):
            self.params: FlatParameters | ModuleParameters = FlatParameters(models)
            self.optimizer: StackedAdamW | ModuleAdamW = StackedAdamW(self.params, configs)
        elif len(models) == 1:
            self.params = ModuleParameters(models[0])
            self.optimizer = ModuleAdamW(self.params, configs[0])
        else:
            raise ValueError(
                f"{type(models[0]).__name__} cannot be batched (it does not declare batchable = True): train one at a time"
            )
        self.losses = _batched(models[0], objective)
        self.alive = [True] * len(models)
        self.results = [MemberResult() for _ in models]
        if any(h is not None for h in held_out) and not all(h is not None for h in held_out):
            raise ValueError("held_out: give a set for every member or for none")
        self.held_out = _HeldOut(models[0], held_out) if held_out[0] is not None else None  # type: ignore[arg-type]
        self._held_out_at: tuple[int, list[float]] = (-1, [])

    @property
    def K(self) -> int:
        return len(self.models)

    def member(self, k: int) -> nn.Module:
        """models[k] holding member k's current parameters (for sampling from it mid-training)."""
        self.params.write_back(k, self.models[k])
        return self.models[k]

    def step(self, step: int, draws: list[Any], hooks: Sequence[Hook]) -> bool:
        """One optimizer step for every live member; False once none is left."""
        batch = self.objective.batch(self, draws)
        losses, extras = self.losses(self.params, batch)  # (K,), {name: (K,)}
        values = losses.tolist()
        for k, value in enumerate(values):
            if self.alive[k] and not math.isfinite(value):
                self.stop(k, f"{self.stages[k]}: loss became {value} at step {step}")
        if not any(self.alive):
            return False
        for leaf in self.params.leaves:
            leaf.grad = None
        torch.where(torch.tensor(self.alive), losses, 0.0).sum().backward()  # members' parameters are disjoint
        self.optimizer.step(step)
        for hook in hooks:
            hook.after_step(self, step, losses.detach(), {n: v.detach() for n, v in extras.items()})
        extra_values = {name: v.tolist() for name, v in extras.items()}
        records: list[dict | None] = [None] * self.K
        for k in (k for k in range(self.K) if self.alive[k]):
            self.results[k].losses.append(values[k])
            c = self.configs[k]
            if (step + 1) % c.eval_every == 0 or step + 1 == c.steps:
                records[k] = self._evaluate(k, step + 1, values[k], {n: v[k] for n, v in extra_values.items()})
        if any(r is not None for r in records):
            for hook in hooks:
                hook.after_eval(self, step + 1, records)
        return True

    def stop(self, k: int, reason: str) -> None:
        # Keep the weights the member had when its loss went bad.
        self.alive[k] = False
        self.results[k].error = reason
        self.params.write_back(k, self.models[k])

    def held_out_losses(self, step: int) -> list[float]:
        """Every member's held-out loss, computed once per step whoever asks."""
        if self.held_out is None:
            raise ValueError("no held-out data was given")
        if self._held_out_at[0] != step:
            self._held_out_at = (step, self.held_out(self.params))
        return self._held_out_at[1]

    def _evaluate(self, k: int, step: int, loss: float, extras: dict[str, float]) -> dict:
        record: dict[str, Any] = {"stage": self.stages[k], "step": step, "loss": loss, **extras}
        if self.held_out is not None:
            record["held_out_loss"] = self.held_out_losses(step)[k]
            self.results[k].held_out.append((step, record["held_out_loss"]))
        if self.logs[k] is not None:
            self.logs[k](record)  # type: ignore[misc]
        return record

    def finish(self) -> None:
        for k, model in enumerate(self.models):
            if self.alive[k]:
                self.params.write_back(k, model)


def per_member(value, K: int, what: str) -> list:
    """`value` as one per member: a list or tuple must have K entries; anything else is shared by all."""
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


def train(
    models: Sequence[nn.Module],
    data: Any,
    configs: TrainConfig | Sequence[TrainConfig],
    generators: Sequence[torch.Generator],
    *,
    objective: Objective = RESPONSE_LOSS,
    stage: str | Sequence[str] = "train",
    held_out: Sequences | Sequence[Sequences | None] | None = None,
    logs: Logger | Sequence[Logger | None] | None = None,
    hooks: Sequence[Hook] = (),
    progress: bool = False,
) -> list[MemberResult]:
    """Train every `models[k]` in place on `data[k]` with `configs[k]`, drawing its batches (with
    replacement) from `generators[k]`. `data`, `configs`, `stage`, `held_out` and `logs` are one for
    all or one per member; `data` is anything with `len()` and `select(index)` that `objective.batch`
    understands. Returns one MemberResult per member; a diverged member has `error` set."""
    K = len(models)
    if K == 0 or len(generators) != K:
        raise ValueError(f"expected one generator per model, got {len(generators)} for {K} models")
    configs, datasets = per_member(configs, K, "configs"), per_member(data, K, "data")
    check_members(configs)
    stages = [stage] * K if isinstance(stage, str) else per_member(stage, K, "stage")
    logs_k = [logs] * K if logs is None or callable(logs) else per_member(logs, K, "logs")
    held = per_member(held_out, K, "held_out")
    size = max(1, MAX_ENSEMBLE_ROWS // configs[0].batch_size)
    results: list[MemberResult] = []
    for a in range(0, K, size):
        b = min(a + size, K)
        run = Ensemble(models[a:b], configs[a:b], objective, stages[a:b], held[a:b], logs_k[a:b], offset=a)
        label = stages[a] if K == 1 else f"{stages[a]} (members {a + 1}-{b} of {K})"
        _train_chunk(run, datasets[a:b], generators[a:b], configs[0], hooks, progress, label)
        results += run.results
    return results


def _train_chunk(run: Ensemble, datasets, generators, config: TrainConfig, hooks, progress: bool, label: str) -> None:
    with _progress(progress, label, config.steps) as advance:
        for step in range(config.steps):
            draws = [
                d.select(torch.randint(0, len(d), (config.batch_size,), generator=g))
                for d, g in zip(datasets, generators)
            ]
            if not run.step(step, draws, hooks):
                break
            advance()
    run.finish()


def train_together(models: Sequence[nn.Module], data, configs, generators, **kwargs) -> list[MemberResult]:
    """`train`, failing the whole call (Diverged) when any member's loss goes bad."""
    results = train(models, data, configs, generators, **kwargs)
    failed = next((r.error for r in results if r.error), None)
    if failed is not None:
        raise Diverged(failed)
    return results


def train_one(model: nn.Module, data, config: TrainConfig, generator: torch.Generator, **kwargs) -> MemberResult:
    """`train` with K = 1: the ordinary run, through the same code."""
    return train_together([model], data, config, [generator], **kwargs)[0]


class _progress:
    """A rich progress bar when asked for, else a no-op; yields a function that advances it."""

    def __init__(self, enabled: bool, stage: str, total: int):
        self.enabled, self.stage, self.total = enabled, stage, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        columns = (TextColumn(f"[bold]{self.stage}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self.bar = Progress(*columns, transient=True)
        self.bar.__enter__()
        task = self.bar.add_task(self.stage, total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False
