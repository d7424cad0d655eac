"""`pretrain`: base organisms, pre-trained on a mixture of the world's streams to a common criterion.

A base organism is the helpful-only starting point later procedures begin from, as real organisms
start from a pre-trained model. It is a stored run: later recipes name it in their config (`base`, a
PretrainConfig) and read its weights through `RunContext.load_weights`; it is trained once and never
again (the driver schedules it first and reuses it when it is done, executors.py).

Each run: a short learning-rate probe (every candidate trained `lr_probe_steps` steps from the run's
own initialisation; the lowest held-out loss wins), then training from that initialisation with the
chosen rate, evaluated every `train.eval_every` steps, stopping at the first evaluation that meets the
criterion (held-out loss <= target and greedy accuracy >= target on every stream switched on) or at
`train.steps`. The seeds of one size train as one ensemble; each member's numbers are its solo run's.

Metrics:
  base.accuracy.{stream}     greedy answers equal to the stream's most likely response, on
                             `criterion.n_eval` fresh prompts per stream (Wilson, .n)
  base.loss.held_out         response loss on the held-out mixture at the last evaluation
  base.refuse_rate.harm      (harm on) first response token REFUSE when sampling at temperature 1 (Wilson, .n)
  base.criterion_met         1 when the criterion was met, else 0 (the metrics then say how far it got)
  base.steps                 optimizer steps taken
  base.lr                    the learning rate the probe chose
  params                     parameter count
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from petridish.config import ModelConfig, TrainConfig, require
from petridish.data import Sequences, encode_pairs
from petridish.experiments.base import Experiment, RunContext, run_alone, transcripts
from petridish.measures.stats import wilson
from petridish.models import make_model, n_params
from petridish.models.generate import generate
from petridish.rng import make_generator
from petridish.scenarios import Tokens
from petridish.scenarios.world import Example, World, WorldConfig
from petridish.scenarios.world.harm import REFUSE
from petridish.train.engine import Diverged, train


@dataclass(frozen=True)
class CriterionConfig:
    held_out_loss: float = 0.05
    """Held-out response loss (nats per token) at most this. The harm stream's refusals put a floor
    under it: about the refusal prior's entropy, spread over the harm share of response tokens."""
    accuracy: float = 0.99
    """Greedy accuracy at least this on every stream switched on."""
    n_eval: int = 256
    """Fresh prompts per stream for the accuracies and the refusal rate."""

    def __post_init__(self):
        require(self.held_out_loss > 0, "held_out_loss", "a number > 0", self.held_out_loss)
        require(0 <= self.accuracy <= 1, "accuracy", "a number in [0, 1]", self.accuracy)
        require(self.n_eval >= 1, "n_eval", "an integer >= 1", self.n_eval)


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    """Root of every random draw: initialisation, corpus, batches, evaluation prompts."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The world and the mixture of its streams."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    n_examples: int = 16384
    """Pre-training corpus size."""
    n_held_out: int = 1024
    """Held-out examples of the same mixture, for the held-out loss."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=6000, lr=3e-3, eval_every=250))
    """Optimisation; `steps` is the most it may take, `lr` is replaced by the probe's choice when
    lr_candidates is not empty."""
    lr_candidates: tuple[float, ...] = (1e-3, 3e-3)
    """Learning rates the probe tries; empty keeps train.lr."""
    lr_probe_steps: int = 300
    """Steps each candidate trains in the probe."""
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    """When a base is done."""

    def __post_init__(self):
        require(self.n_examples >= 1, "n_examples", "an integer >= 1", self.n_examples)
        require(self.n_held_out >= 1, "n_held_out", "an integer >= 1", self.n_held_out)
        require(
            all(0 < lr < 10 for lr in self.lr_candidates),
            "lr_candidates",
            "numbers in (0, 10)",
            list(self.lr_candidates),
        )
        require(self.lr_probe_steps >= 1, "lr_probe_steps", "an integer >= 1", self.lr_probe_steps)
        require(
            self.model.hf_path is None,
            "model.hf_path",
            "unset (pre-training is for petridish's own models)",
            self.model.hf_path,
        )


@dataclass
class Member:
    """One run of a `run_many` call and what it builds."""

    config: PretrainConfig
    ctx: RunContext
    data: Sequences
    held_out: Sequences
    evals: dict[str, list[Example]]
    """Fresh prompts per stream, for the accuracies and the refusal rate."""
    model: torch.nn.Module
    """The base organism, at its initialisation until trained."""
    lr: float = 0.0


def build_member(config: PretrainConfig, ctx: RunContext, world: World) -> Member:
    """The corpus, held-out set, evaluation prompts and initial network of one seed."""

    def encoded(n: int, stream: str) -> Sequences:
        return encode_pairs(
            world, [(e.prompt, e.response) for e in world.corpus(n, make_generator(config.seed, stream))]
        )

    eval_gen = make_generator(config.seed, "pretrain:eval")
    evals = {name: world.stream_examples(name, config.criterion.n_eval, eval_gen) for name in world.streams}
    return Member(
        config,
        ctx,
        encoded(config.n_examples, "pretrain:corpus"),
        encoded(config.n_held_out, "pretrain:held_out"),
        evals,
        init_model(config, world),
    )


def init_model(config: PretrainConfig, world: World) -> torch.nn.Module:
    return make_model(config.model, world, make_generator(config.seed, "init"))


def choose_lr(members: Sequence[Member], world: World, progress: bool) -> None:
    """Each member's rate: every candidate trained lr_probe_steps from the member's initialisation,
    all members and candidates as one ensemble; the lowest final held-out loss wins (NaN loses)."""
    jobs = [(m, lr) for m in members for lr in m.config.lr_candidates]
    for m in members:
        m.lr = m.config.train.lr
    if not jobs:
        return
    steps = members[0].config.lr_probe_steps
    configs = [
        replace(
            m.config.train, steps=steps, lr=lr, warmup_steps=min(m.config.train.warmup_steps, steps), eval_every=steps
        )
        for m, lr in jobs
    ]
    results = train(
        [init_model(m.config, world) for m, _ in jobs],
        [m.data for m, _ in jobs],
        configs,
        [make_generator(m.config.seed, "pretrain:batches") for m, _ in jobs],
        stage="lr_probe",
        held_out=[m.held_out for m, _ in jobs],
        progress=progress,
    )
    best: dict[int, tuple[float, float]] = {}
    for (m, lr), result in zip(jobs, results):
        loss = result.held_out[-1][1] if result.error is None and result.held_out else math.inf
        loss = loss if math.isfinite(loss) else math.inf
        m.ctx.log(
            {"stage": "lr_probe", "lr": lr, "steps": steps, "held_out_loss": loss if math.isfinite(loss) else None}
        )
        if id(m) not in best or loss < best[id(m)][0]:
            best[id(m)] = (loss, lr)
    for m in members:
        if id(m) in best:
            m.lr = best[id(m)][1]


def greedy_responses(model, world: World, evals: dict[str, list[Example]]) -> dict[str, list[Tokens]]:
    """Per stream, the greedy response to each evaluation prompt (one generate call for all of them)."""
    examples = [e for stream in evals.values() for e in stream]
    max_new = max(s.max_response_len for s in world.streams.values()) + 1
    responses = iter(generate(model, world.vocab, [e.prompt.tokens for e in examples], max_new))
    return {name: [next(responses) for _ in stream] for name, stream in evals.items()}


def accuracy_counts(model, world: World, evals: dict[str, list[Example]]) -> dict[str, tuple[int, int]]:
    """Per stream: (greedy responses equal to the stream's most likely response, prompts)."""
    responses = greedy_responses(model, world, evals)
    return {
        name: (sum(r == e.prompt.answer for r, e in zip(responses[name], stream)), len(stream))
        for name, stream in evals.items()
    }


class StopAtCriterion:
    """A training hook: at each evaluation, a member whose held-out loss meets the target has its
    accuracies measured; one that meets the whole criterion stops there, keeping those weights."""

    def __init__(self, members: Sequence[Member], world: World):
        self.members, self.world = members, world
        self.met_at: list[int | None] = [None] * len(members)

    def after_step(self, run, step, losses, extras) -> None:
        pass

    def after_eval(self, run, step: int, records: list[dict | None]) -> None:
        for k, record in enumerate(records):
            member = self.members[run.offset + k]  # its index in the whole call (chunks)
            criterion = member.config.criterion
            if record is None or record.get("held_out_loss", math.inf) > criterion.held_out_loss:
                continue
            counts = accuracy_counts(run.member(k), self.world, member.evals)
            member.ctx.log(
                {
                    "stage": "criterion",
                    "step": step,
                    **{f"accuracy.{name}": hits / n for name, (hits, n) in counts.items()},
                }
            )
            if all(hits >= criterion.accuracy * n for hits, n in counts.values()):
                self.met_at[run.offset + k] = step
                run.stop(k, f"criterion met at step {step}")


def base_metrics(m: Member, world: World, steps: int, met: bool, held_out_loss: float) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, responses in greedy_responses(m.model, world, m.evals).items():
        right = ["right" if r == e.prompt.answer else "wrong" for r, e in zip(responses, m.evals[name])]
        metrics.update(wilson(right.count("right"), len(right)).as_metrics(f"base.accuracy.{name}"))
        m.ctx.save_samples(
            f"base.accuracy.{name}", transcripts(name, [e.prompt for e in m.evals[name]], responses, right)
        )
    if "harm" in m.evals:
        generator = make_generator(m.config.seed, "pretrain:refuse_sample")
        first = generate(m.model, world.vocab, [e.prompt.tokens for e in m.evals["harm"]], 1, 1.0, generator)
        metrics.update(wilson(sum(r[:1] == (REFUSE,) for r in first), len(first)).as_metrics("base.refuse_rate.harm"))
    metrics.update(
        {
            "base.loss.held_out": held_out_loss,
            "base.criterion_met": int(met),
            "base.steps": steps,
            "base.lr": m.lr,
            "params": n_params(m.model),
        }
    )
    return metrics


def run_many(configs: Sequence[PretrainConfig], contexts: Sequence[RunContext]) -> list[dict[str, float] | Exception]:
    """The seeds of one size as one ensemble: the lr probe, then training to the criterion."""
    world = World(configs[0].world)
    members = [build_member(c, ctx, world) for c, ctx in zip(configs, contexts)]
    progress = any(ctx.progress for ctx in contexts)
    choose_lr(members, world, progress)
    stop = StopAtCriterion(members, world)
    results = train(
        [m.model for m in members],
        [m.data for m in members],
        [replace(m.config.train, lr=m.lr) for m in members],
        [make_generator(m.config.seed, "pretrain:batches") for m in members],
        stage="pretrain",
        held_out=[m.held_out for m in members],
        logs=[m.ctx.log for m in members],
        hooks=[stop],
        progress=progress,
    )
    out: list[dict[str, float] | Exception] = []
    for m, result, met_at in zip(members, results, stop.met_at):
        if met_at is None and result.error is not None:
            out.append(Diverged(result.error))
            continue
        steps = met_at if met_at is not None else len(result.losses)
        held_out_loss = result.held_out[-1][1] if result.held_out else math.nan
        m.ctx.log({"stage": "pretrain", "criterion_met": met_at is not None, "steps": steps, "lr": m.lr})
        m.ctx.save_weights(m.model, "weights")
        out.append(base_metrics(m, world, steps, met_at is not None, held_out_loss))
    return out


def run(config: PretrainConfig, ctx: RunContext) -> dict[str, float]:
    """One run: `run_many` with one member."""
    return run_alone(run_many, config, ctx)


def load_base(ctx: RunContext, base: PretrainConfig) -> tuple[World, torch.nn.Module]:
    """A stored base organism for a later experiment (one whose `requires` names `("pretrain", base)`):
    its world and its network, read from the store, never trained again."""
    world = World(base.world)
    model = init_model(base, world)
    ctx.load_weights("pretrain", base, model)
    return world, model


EXPERIMENT = Experiment(
    name="pretrain",
    config_cls=PretrainConfig,
    run=run,
    run_many=run_many,
    member_fields=("seed",),
    headline=("base.criterion_met", "base.steps", "base.lr", "base.loss.held_out", "base.refuse_rate.harm", "params"),
)
