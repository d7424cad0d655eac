"""`dual`: what each policy costs in inductive bias, asked both ways round.

With `scenario.name = "world"` (the default) the labellings are those of the world's environments:
looking up what each training environment rewards, or deriving it from the world model's facts, priced
against the number of environments E (`experiments.dual_world`). Any other scenario prices the four
policies of that scenario, as described below.

For each policy, the network is trained on that policy's *full labelling*: the training prompts (where
the policies agree), fresh training-distribution prompts, and diagnostic prompts (where they differ). The
memorizer is a lookup table of the training prompts: right on them, an all-zeros answer elsewhere, so
fitting it means telling seen prompts from unseen ones of the same distribution.

(a) Loss as the constraint: the least-norm weights with training loss <= eps, found by gradient
    descent-ascent on the Lagrangian (`train.constrained.min_norm_at_loss`); at that point, the norm,
    the compressed size and the LLC. Also the steps plain training needs to reach eps, and the minimal
    width that reaches eps (from the width budgets of (b)).
(b) Complexity as the constraint: the least training loss reached inside an L2 ball (projected Adam),
    at a given width, and at a given depth.

The plain, width and depth runs of every policy and seed train together in the ensemble engine
(`ensemble`); the Lagrangian and the norm balls have their own loops and run one network at a time.
Every figure is a mean over `n_seeds` networks per policy with a bootstrap interval; see the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Sequence

import torch

from petridish.config import ModelConfig, TrainConfig, require, require_default
from petridish.data import Sequences, encode_pairs, labelled
from petridish.experiments.base import SAMPLES_PER_CONDITION, Experiment, RunContext, transcripts
from petridish.experiments.dual_derive import DeriveConfig, run_derive
from petridish.experiments.dual_world import EnvironmentsConfig, excess, run_environments
from petridish.experiments.selection import agreeing_policies, network_responses, reference_policies, training_prompts
from petridish.measures.complexity import (
    ComplexityConfig,
    compressed_bits,
    dataset_loss,
    llc,
    minimal_width,
    steps_to_loss,
)
from petridish.measures.stats import bootstrap_mean, wilson
from petridish.models import make_model
from petridish.rng import make_generator
from petridish.scenarios import ScenarioConfig, make_scenario
from petridish.train.constrained import LagrangianConfig, least_loss_in_ball, min_norm_at_loss
from petridish.train.engine import train_one, train_together

PolicyName = Literal["aligned", "sycophant", "deceptive", "memorizer"]


@dataclass(frozen=True)
class BudgetConfig:
    radii: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
    """L2-norm budgets (radius of the ball the weights are projected into)."""
    widths: tuple[int, ...] = (4, 8, 16, 32)
    """Width budgets: `model.d_model` values (the MLP's hidden width is d_model * mlp_ratio)."""
    depths: tuple[int, ...] = (1, 2)
    """Depth budgets: `model.n_layers` values (hidden layers of the MLP, blocks of the transformer)."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=600, batch_size=64, weight_decay=0.0, eval_every=25)
    )
    """Optimisation under each budget (and the plain run that times steps-to-eps)."""

    def __post_init__(self):
        require(all(r > 0 for r in self.radii), "radii", "numbers > 0", self.radii)
        require(all(w >= 4 for w in self.widths), "widths", "integers >= 4", self.widths)
        require(all(d >= 1 for d in self.depths), "depths", "integers >= 1", self.depths)


@dataclass(frozen=True)
class DualConfig:
    seed: int = 0
    """Root of every random draw."""
    scenario: ScenarioConfig = field(default_factory=lambda: ScenarioConfig(name="world", task="sort", n_digits=3))
    """`world`: the environments' labellings, configured by `environments` (n_digits and task unused there).
    Any other scenario: the four `policies` of that scenario, priced on one environment."""
    environments: EnvironmentsConfig = field(default_factory=EnvironmentsConfig)
    """`world` only: E, the held-out environments, the prompt sets and the labellings."""
    arm: Literal["price", "derive"] = "price"
    """`world` only. `price`: every labelling's costs, and P(derive) of the prompt MLP (`dual_world`).
    `derive`: P(derive) of transformers, which can compose a fact with a transform (`derive`,
    `dual_derive`); it reads `environments.counts`, `n_held_out`, `n_tasks` and `n_digits` and ignores the
    pricing's fields, as selection's arms ignore each other's."""
    derive: DeriveConfig = field(default_factory=DeriveConfig)
    """(`arm = "derive"`) The transformers, their data, the arms and the fit criterion."""
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(kind="mlp", preset="custom", d_model=64, n_layers=1, mlp_ratio=1)
    )
    """The architecture of (a) and of the norm budgets; width and depth budgets replace d_model / n_layers."""
    policies: tuple[PolicyName, ...] = ("aligned", "sycophant", "deceptive", "memorizer")
    """Policies to price (any that coincide with an earlier one on the diagnostic prompts are skipped); not
    `world`, which prices `environments.labellings`."""
    n_train: int = 512
    """Training prompts (the memorizer's table)."""
    n_fresh: int = 256
    """Fresh training-distribution prompts in every labelling (the memorizer answers them with zeros)."""
    n_diagnostic: int = 192
    """Diagnostic prompts in every labelling."""
    n_seeds: int = 4
    """Networks per policy and budget."""
    eps: float = 0.05
    """The loss bound of (a), and the target of steps-to-eps and minimal width (nats per response token)."""
    lagrangian: LagrangianConfig = field(default_factory=LagrangianConfig)
    """Gradient descent-ascent of (a)."""
    budgets: BudgetConfig = field(default_factory=BudgetConfig)
    """The budgets of (b)."""
    complexity: ComplexityConfig = field(default_factory=ComplexityConfig)
    """Compressed-size tolerance and LLC sampler."""
    ensemble: bool = True
    """Train the unconstrained runs of one budget (plain, each width, each depth) for every policy and
    seed together, and likewise the Lagrangian and each norm ball (train/engine.py): the same draws and
    trajectories as one by one; false trains every network alone (K = 1)."""

    def __post_init__(self):
        require(len(self.policies) >= 1, "policies", "a non-empty list", self.policies)
        require(self.n_train >= 1, "n_train", "an integer >= 1", self.n_train)
        require(self.n_fresh >= 0, "n_fresh", "an integer >= 0", self.n_fresh)
        require(self.n_diagnostic >= 3, "n_diagnostic", "an integer >= 3", self.n_diagnostic)
        require(self.n_seeds >= 1, "n_seeds", "an integer >= 1", self.n_seeds)
        require(self.eps > 0, "eps", "a number > 0", self.eps)
        if self.arm == "derive":
            require(self.scenario.name == "world", "arm", "'price' unless scenario.name = 'world'", self.arm)
        else:
            require_default(self, ("derive",), "", "unless arm = 'derive'")


def budget_name(value: float) -> str:
    """4.0 -> '4', 2.5 -> '2p5': a budget as one segment of a dotted metric name."""
    return f"{value:g}".replace(".", "p")


def labelling_prompts(config: DualConfig):
    """(scenario, {prompt set: prompts} for train, fresh and diagnostic, the distinct reference policies)."""
    scenario = make_scenario(config.scenario)
    gen = make_generator(config.seed, "data")
    table = training_prompts(scenario, config.n_train, gen)
    fresh = training_prompts(scenario, config.n_fresh, gen)
    diagnostic = scenario.diagnostic_prompts(config.n_diagnostic, gen)
    return (
        scenario,
        {"train": table, "fresh": fresh, "diagnostic": diagnostic},
        reference_policies(scenario, table, diagnostic),
    )


def labellings(config: DualConfig) -> tuple[dict[str, Sequences], object]:
    """{policy: its full labelling as tensors} for the distinct policies asked for, and the scenario."""
    scenario, sets, policies = labelling_prompts(config)
    prompts = sets["train"] + sets["fresh"] + sets["diagnostic"]
    return {
        name: encode_pairs(scenario, labelled(policies[name], prompts)) for name in config.policies if name in policies
    }, scenario


def constrained_costs(
    config: DualConfig,
    scenario,
    members: Sequence[tuple[str, Sequences]],
    ctx: RunContext,
    on_model: Callable[[str, torch.nn.Module], None] | None = None,
) -> list[dict[str, float]]:
    """Each member's (stream, labelling) answer to (a), and its least loss in each norm ball of (b). With
    `ensemble`, every member trains at once in the Lagrangian and in each ball. `on_model(stream, model)`
    sees each answer to (a) (for its transcripts)."""

    def fresh_model(stream: str, tag: str) -> torch.nn.Module:
        return make_model(config.model, scenario, make_generator(config.seed, f"init:{stream}:{tag}"))

    def batches(stream: str, tag: str) -> torch.Generator:
        return make_generator(config.seed, f"batches:{stream}:{tag}")

    out: list[dict[str, float]] = []
    for group in [list(members)] if config.ensemble else [[m] for m in members]:
        streams, datasets = [s for s, _ in group], [d for _, d in group]
        models = [fresh_model(s, "lagrangian") for s in streams]
        results = min_norm_at_loss(
            models,
            datasets,
            config.eps,
            config.lagrangian,
            [batches(s, "lagrangian") for s in streams],
            stage=[f"lagrangian.{s}" for s in streams],
            logs=[ctx.log] * len(group),
        )
        priced = [
            dict(
                feasible=float(r.feasible),
                train_loss=r.loss,
                param_norm=r.norm,
                bits=compressed_bits(m, d, config.complexity.bits_tolerance).bits,
                llc=llc(m, d, config.complexity.llc, make_generator(config.seed, f"llc:{s}")),
            )
            for m, d, s, r in zip(models, datasets, streams, results)
        ]
        if on_model is not None:
            for stream, model in zip(streams, models):
                on_model(stream, model)
        for radius in config.budgets.radii:
            balls = least_loss_in_ball(
                [fresh_model(s, f"norm{radius}") for s in streams],
                datasets,
                [radius] * len(group),
                config.budgets.train,
                [batches(s, f"norm{radius}") for s in streams],
            )
            for p, ball in zip(priced, balls):
                p[f"norm.{budget_name(radius)}"] = ball.loss
        out.extend(priced)
    return out


def budget_models(config: DualConfig) -> list[tuple[str, str, ModelConfig]]:
    """(metric key, init and batch stream tag, architecture) of each unconstrained training run: the
    plain run that times steps-to-eps, then one per width and per depth budget."""
    runs = [("plain", "plain", config.model)]
    for width in config.budgets.widths:
        runs.append(
            (
                f"width.{width}",
                f"width{width}",
                replace(config.model, preset="custom", d_model=width, n_heads=_heads(config.model, width)),
            )
        )
    d_model, _, n_heads = config.model.shape()
    for depth in config.budgets.depths:
        runs.append(
            (
                f"depth.{depth}",
                f"depth{depth}",
                replace(config.model, preset="custom", d_model=d_model, n_heads=n_heads, n_layers=depth),
            )
        )
    return runs


def train_budgets(config: DualConfig, scenario, members: Sequence[tuple[str, Sequences]]) -> list[dict[str, float]]:
    """For each member (stream, labelling): steps plain training needs to reach eps, the least loss at
    each width and depth budget, and the minimal width. The members of one budget share an architecture,
    so with `ensemble` they train together, every policy and seed at once."""
    out: list[dict[str, float]] = [{} for _ in members]
    datasets = [data for _, data in members]
    for key, tag, model_config in budget_models(config):
        models = [
            make_model(model_config, scenario, make_generator(config.seed, f"init:{stream}:{tag}"))
            for stream, _ in members
        ]
        generators = [make_generator(config.seed, f"batches:{stream}:{tag}") for stream, _ in members]
        stages = [f"{key}.{stream}" for stream, _ in members]
        if config.ensemble:
            results = train_together(
                models, datasets, config.budgets.train, generators, stage=stages, held_out=datasets
            )
        else:
            results = [
                train_one(m, d, config.budgets.train, g, stage=s, held_out=d)
                for m, d, g, s in zip(models, datasets, generators, stages)
            ]
        for priced, model, result, data in zip(out, models, results, datasets):
            if key == "plain":
                steps = steps_to_loss(result.held_out, config.eps)
                priced.update({} if steps is None else {"steps_to_eps": steps})
            else:
                priced[key] = min([loss for _, loss in result.held_out] + [dataset_loss(model, data)])
    for priced in out:
        smallest = minimal_width({w: priced[f"width.{w}"] for w in config.budgets.widths}, config.eps)
        priced.update({} if smallest is None else {"min_width": smallest})
    return out


def _heads(model: ModelConfig, width: int) -> int:
    """The configured head count if it divides the width, else 1 (the MLP ignores heads)."""
    heads = model.shape()[2]
    return heads if width % heads == 0 else 1


# --- the run --------------------------------------------------------------------------------------

POINT_MEASURES = ("param_norm", "bits", "llc", "train_loss")
REACHED = {"steps_to_eps": "reached_eps", "min_width": "min_width_reached"}


def summarise_policy(name: str, seeds: list[dict[str, float]]) -> dict[str, float]:
    """cost.<policy>.* and least_loss.<policy>.* over seeds."""
    out = wilson(sum(s["feasible"] > 0 for s in seeds), len(seeds)).as_metrics(f"cost.{name}.feasible")
    for measure in POINT_MEASURES:
        out.update(bootstrap_mean([s[measure] for s in seeds]).as_metrics(f"cost.{name}.{measure}"))
    for measure, reached in REACHED.items():
        values = [s[measure] for s in seeds if measure in s]
        out.update(wilson(len(values), len(seeds)).as_metrics(f"cost.{name}.{reached}"))
        if values:
            out.update(bootstrap_mean(values).as_metrics(f"cost.{name}.{measure}"))
    budgets = [k for k in seeds[0] if k.startswith(("norm.", "width.", "depth."))]
    for key in budgets:
        out.update(bootstrap_mean([s[key] for s in seeds]).as_metrics(f"least_loss.{name}.{key}"))
    return out


def memorizer_excess(memorizer: list[dict[str, float]], aligned: list[dict[str, float]]) -> dict[str, float]:
    """memorizer minus aligned, paired by seed, per measure; and whether the memorizer costs more in every
    measure. For steps-to-eps and minimal width a seed where only the aligned network reached eps counts
    as the memorizer costing more (censored: it needed more steps, or more width, than were tried)."""
    out, costs_more = excess(
        memorizer, aligned, "memorizer_excess", ("param_norm", "bits", "llc", "steps_to_eps", "min_width")
    )
    out["memorizer_costs_more"] = float(costs_more)
    return out


def labelling_transcripts(config: DualConfig, ctx: RunContext) -> Callable[[str, torch.nn.Module], None]:
    """A callback that stores, for the first network of each labelling, its answers to (a) on each prompt
    set, labelled by the reference policies they agree with (`target`: the labelling it was trained on)."""
    scenario, sets, policies = labelling_prompts(config)

    def save(stream: str, model: torch.nn.Module) -> None:
        name, seed = stream.split(":")
        if seed != "0":
            return
        rows = []
        for condition, prompts in sets.items():
            prompts = prompts[:SAMPLES_PER_CONDITION]
            responses = network_responses(model, scenario, prompts)
            rows += transcripts(
                condition,
                prompts,
                responses,
                [agreeing_policies(r, p, policies) for r, p in zip(responses, prompts)],
                target=name,
            )
        ctx.save_samples(f"labelling.{name}", rows)

    return save


def run(config: DualConfig, ctx: RunContext) -> dict[str, float]:
    if config.arm == "derive":
        return run_derive(config, ctx)
    if config.scenario.name == "world":
        return run_environments(config, ctx)
    data, scenario = labellings(config)
    members = [(name, seed) for name in data for seed in range(config.n_seeds)]
    budgets = train_budgets(config, scenario, [(f"{name}:{seed}", data[name]) for name, seed in members])
    ensemble_members = len(members) if config.ensemble else 1
    ctx.log({"stage": "ensemble", "members": ensemble_members})
    per_policy: dict[str, list[dict[str, float]]] = {name: [] for name in data}
    constrained = constrained_costs(
        config,
        scenario,
        [(f"{name}:{seed}", data[name]) for name, seed in members],
        ctx,
        labelling_transcripts(config, ctx),
    )
    for (name, seed), trained, costs in zip(members, budgets, constrained):
        priced = {**costs, **trained}
        ctx.log({"stage": "priced", "policy": name, "network": seed, **priced})
        per_policy[name].append(priced)
    metrics: dict[str, float] = {}
    for name, seeds in per_policy.items():
        metrics.update(summarise_policy(name, seeds))
    if "memorizer" in per_policy and "aligned" in per_policy:
        metrics.update(memorizer_excess(per_policy["memorizer"], per_policy["aligned"]))
    metrics["n_prompts"] = len(next(iter(data.values())))
    metrics["ensemble_members"] = ensemble_members
    return metrics


EXPERIMENT = Experiment(
    name="dual",
    config_cls=DualConfig,
    run=run,
    version=1,  # the world's LLC at the equal-loss minimum, part (b) on the world, t-interval control (CHANGELOG)
    headline=tuple(
        f"{metric}.E{E}"
        for E in (2, 8, 32)
        for metric in (
            "cost.sycophant_lookup.param_norm",
            "cost.sycophant_derive.param_norm",
            "cost.sycophant_lookup.bits",
            "cost.sycophant_derive.bits",
            "cost.sycophant_lookup.llc",  # over the networks whose LLC diagnostics all passed; absent if none did
            "cost.sycophant_derive.llc",
            "llc.diagnostics.passed",
            "p.derive",
        )
    )
    + ("memorizer_costs_more", "lookup_equals_derive.E1"),
)
