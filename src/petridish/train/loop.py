"""The one training loop: AdamW, warmup then cosine, gradient clipping, loss on response tokens only.

Every procedure (insert, sft, rl's supervised parts, adversarial, constrained) trains through here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from petridish.config import TrainConfig
from petridish.data import Sequences
from petridish.errors import RunFailed
from petridish.models.mlp import PromptMLP

Logger = Callable[[dict], None]
LossFn = Callable[[torch.nn.Module, object], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]
"""model, batch -> loss, or (loss, extras to log): the hook through which RL, reward models and red-team
training use this loop (devinterp's `evaluate(model, batch) -> (loss, extras)` protocol)."""


class Diverged(RunFailed):
    """The loss became NaN or infinite."""


def response_logits(model: torch.nn.Module, batch: Sequences) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (B, T', V), targets (B, T'), mask (B, T')): the predictions of each next token, aligned so
    that `mask` marks the response tokens; the same view for the transformer and the prompt MLP."""
    if isinstance(model, PromptMLP):
        return _mlp_view(model, batch)
    logits = model(batch.tokens[:, :-1])  # (B, T-1, V)
    return logits, batch.tokens[:, 1:], batch.target_mask[:, 1:]


def response_loss(model: torch.nn.Module, batch: Sequences, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on the response tokens of each sequence (mean over tokens, or one value per row)."""
    logits, targets, mask = response_logits(model, batch)
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask  # (B, T-1)
    if reduction == "none":
        return losses.sum(1) / mask.sum(1).clamp(min=1)
    return losses.sum() / mask.sum().clamp(min=1)


def _mlp_view(model: PromptMLP, batch: Sequences):
    R = model.response_len
    index = (batch.prompt_len[:, None] + torch.arange(R)).clamp(max=batch.tokens.shape[1] - 1)  # (B, R)
    targets = batch.tokens.gather(1, index)
    mask = batch.target_mask.gather(1, index) & (batch.prompt_len[:, None] + torch.arange(R) < batch.tokens.shape[1])
    prompts = batch.tokens.masked_fill(torch.arange(batch.tokens.shape[1]) >= batch.prompt_len[:, None], 0)
    return model.response_logits(prompts), targets, mask


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    # Decay matrices only: decaying biases and LayerNorm gains just fights the normalisation.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup to 1, then a cosine down to lr_min_ratio."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return config.lr_min_ratio + (1 - config.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    """Training loss at every step."""
    held_out: list[tuple[int, float]] = field(default_factory=list)
    """(step, held-out loss) at every evaluation."""


def train(
    model: torch.nn.Module,
    data: Sequences,
    config: TrainConfig,
    generator: torch.Generator,
    *,
    stage: str = "train",
    held_out: Sequences | None = None,
    log: Logger | None = None,
    progress: bool = False,
    loss_fn: LossFn = response_loss,
) -> TrainResult:
    """Train `model` in place on `data`; batches are drawn with replacement from `generator`.

    `data` is anything with `len()` and `select(index)` (Sequences, or a procedure's own batch type
    read by its `loss_fn`); extras that `loss_fn` returns are logged at every evaluation."""
    optimizer = make_optimizer(model, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    result = TrainResult()
    model.train()
    with _progress(progress, stage, config.steps) as advance:
        for step in range(config.steps):
            batch = data.select(torch.randint(0, len(data), (config.batch_size,), generator=generator))
            loss, extras = _split(loss_fn(model, batch))
            if not torch.isfinite(loss):
                raise Diverged(f"{stage}: loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            schedule.step()
            result.losses.append(loss.item())
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                _evaluate(model, step + 1, loss.item(), held_out, stage, result, log, extras)
            advance()
    return result


def _split(out) -> tuple[torch.Tensor, dict[str, float]]:
    return out if isinstance(out, tuple) else (out, {})


def _evaluate(model, step, loss, held_out, stage, result, log, extras=None) -> None:
    record = {"stage": stage, "step": step, "loss": loss, **(extras or {})}
    if held_out is not None:
        with torch.no_grad():
            record["held_out_loss"] = response_loss(model, held_out).item()
        result.held_out.append((step, record["held_out_loss"]))
        model.train()
    if log is not None:
        log(record)


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
