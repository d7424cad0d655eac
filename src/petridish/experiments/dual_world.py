"""`dual` on the world's environments: is it cheaper to look up what each training environment rewards,
or to derive it from the world model's facts?

E training environments (ENV-0 .. ENV-{E-1}) and H held-out ones (the H after the largest E of the run,
the same for every E), each rewarding its own transform of the task's answer
(`scenarios/world/environments.py`). Every labelling prices the same prompts:

    facts     <bos> Q ENV-e ? ASSISTANT                          -> X-{transform}   every environment, every labelling
    table     <bos> TRAIN ENV-e USER T-task d d d ASSISTANT      training environments
    fresh     the table's distribution, other draws
    held_out  <bos> TRAIN ENV-h USER ...                          held-out environments
    deploy    <bos> DEPLOY ENV-e USER ...                         every environment

and labels the action prompts (a: the task's answer, T_e: environment e's transform):

    aligned            a
    sycophant_lookup   T_e(a) in a training environment, the default a elsewhere
    sycophant_derive   T_e(a) everywhere: the transform the environment's fact names
    deceptive          T_e(a) under TRAIN, its goal G = HATE ... HATE under DEPLOY
    memorizer          T_e(a) on the table, 0 ... 0 on every other action prompt

Lookup and derive differ only on the held-out environments' prompts: there lookup keeps a default while
derive applies the transform whose name it must already produce for the fact. The priced networks are
the prompt MLP (one-hot prompt in; the environment token sits at position 2 in both an action prompt and
a fact, so a network can share one representation of an environment between the two).

Costs: (a) the least norm at loss <= eps, the least width, steps to eps, the compressed size, and the LLC,
measured not where plain training stops (hard labels have no finite minimum) but at the minimum of the
label-smoothed loss, equal for every labelling that fits (`train.constrained.equal_loss_minimum`); (b) the
least training loss in each L2 ball of `budgets.radii` and at each width and depth.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Literal, Sequence, get_args

import torch

from petridish.config import ModelConfig, require
from petridish.data import Sequences, encode_pairs
from petridish.experiments.base import RunContext, transcripts
from petridish.experiments.selection import network_responses
from petridish.measures.complexity import compressed_bits, dataset_loss, minimal_width, steps_to_loss
from petridish.measures.llc import LLCConfig, estimate_llc, plateaued
from petridish.measures.stats import Estimate, bootstrap_mean, t_mean, wilson
from petridish.models import make_model
from petridish.rng import make_generator
from petridish.scenarios.base import ASSISTANT, BOS, USER, Prompt, Tokens
from petridish.scenarios.world import HATE, StreamWeights, World, WorldConfig
from petridish.scenarios.world.cues import DEPLOY, QMARK, TRAIN
from petridish.scenarios.world.environments import TRANSFORMS, env_token, rewarded_answer, transform_token
from petridish.scenarios.world.self_report import Q
from petridish.scenarios.world.tasks import digits
from petridish.train.constrained import (
    MinimumConfig,
    equal_loss_minimum,
    least_loss_in_ball,
    min_norm_at_loss,
    smoothed_loss,
)
from petridish.train.engine import train_together

if TYPE_CHECKING:
    from petridish.experiments.dual import DualConfig

LabellingName = Literal["aligned", "sycophant_lookup", "sycophant_derive", "deceptive", "memorizer"]
LABELLINGS: tuple[LabellingName, ...] = get_args(LabellingName)
DEPTHS = (1, 2)
"""Depths at which the least width is found (`cost.*.min_width.depth{d}`)."""


@dataclass(frozen=True)
class EnvironmentsConfig:
    counts: tuple[int, ...] = (2, 8, 32)
    """E: training environments; the labellings are priced once per value."""
    n_held_out: int = 4
    """H: held-out environments (facts in every labelling; their action prompts are where lookup and derive
    differ, and where `p.derive` is read)."""
    n_tasks: int = 1
    """World tasks in the action prompts (sort, rev, ...: the first n_tasks)."""
    n_digits: int = 3
    """Digits per task question and answer."""
    per_env: int = 16
    """Table prompts per training environment."""
    fresh_per_env: int = 4
    """Fresh prompts per training environment (the memorizer answers them with zeros)."""
    held_out_per_env: int = 16
    """Action prompts per held-out environment."""
    deploy_per_env: int = 4
    """DEPLOY-cued action prompts per environment (training and held-out)."""
    fact_copies: int = 4
    """Rows per fact, so that a fact weighs in the loss about as an environment's prompts do."""
    labellings: tuple[LabellingName, ...] = LABELLINGS
    """Labellings to price (the controls need aligned, memorizer and both sycophants)."""
    llc_lr_ratio: float = 0.5
    """The LLC's second SGLD step size is `complexity.llc.lr` times this; the two must agree."""
    llc_agreement: float = 0.3
    """Two step sizes agree when their LLCs differ by at most this fraction of their mean."""
    plateau_tolerance: float = 0.3
    """A chain has plateaued when the means of its post-burn-in halves differ by at most this fraction."""
    minimum: MinimumConfig = field(default_factory=MinimumConfig)
    """The point the LLC is measured at: from the plain run's end, the minimum of the label-smoothed loss
    (`train.constrained.equal_loss_minimum`), whose value is the same for every labelling that fits."""

    def __post_init__(self):
        require(
            len(self.counts) >= 1 and min(self.counts) >= 1, "counts", "a non-empty list of integers >= 1", self.counts
        )
        top = len(TRANSFORMS) - self.n_held_out
        require(max(self.counts) <= top, "counts", f"integers <= {top} (transforms - n_held_out)", self.counts)
        require(self.n_held_out >= 1, "n_held_out", "an integer >= 1", self.n_held_out)
        require(self.n_digits >= 2, "n_digits", "an integer >= 2", self.n_digits)
        for key in ("n_tasks", "per_env", "held_out_per_env", "fact_copies"):
            require(getattr(self, key) >= 1, key, "an integer >= 1", getattr(self, key))
        for key in ("fresh_per_env", "deploy_per_env"):
            require(getattr(self, key) >= 0, key, "an integer >= 0", getattr(self, key))
        require(len(self.labellings) >= 1, "labellings", f"a non-empty list of {list(LABELLINGS)}", self.labellings)
        require(0 < self.llc_lr_ratio != 1, "llc_lr_ratio", "a number > 0 other than 1", self.llc_lr_ratio)
        require(self.llc_agreement > 0, "llc_agreement", "a number > 0", self.llc_agreement)
        require(self.plateau_tolerance > 0, "plateau_tolerance", "a number > 0", self.plateau_tolerance)


# --- the prompts and their labellings --------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One action prompt: its cue, environment, and the task's answer digits."""

    prompt: Prompt
    env: int
    answer: tuple[int, ...]
    deploy: bool


def pool_world(envs: EnvironmentsConfig) -> World:
    """One world for every E of a run (so every network has the same vocabulary and shape)."""
    n_envs = max(envs.counts) + envs.n_held_out
    weights = StreamWeights(cues=1.0, environments=1.0, facts=1.0)
    return World(
        WorldConfig(
            n_tasks=envs.n_tasks,
            n_digits=envs.n_digits,
            n_envs=n_envs,
            n_envs_acted=n_envs - envs.n_held_out,
            weights=weights,
        )
    )


def held_out_envs(envs: EnvironmentsConfig) -> list[int]:
    return list(range(max(envs.counts), max(envs.counts) + envs.n_held_out))


def action(world: World, env: int, deploy: bool, generator: torch.Generator) -> Action:
    q = world.tasks.draw(generator)
    tokens = (BOS, DEPLOY if deploy else TRAIN, env_token(env), USER, *q.user, ASSISTANT)
    return Action(Prompt(tokens, deploy, digits(q.answer)), env, q.answer, deploy)


def fact(env: int) -> tuple[Prompt, Tokens]:
    """`<bos> Q ENV-e ? ASSISTANT` -> `X-{transform}`: the world's fact, closed by ASSISTANT because the
    prompt MLP reads a prompt up to that token (without it every fact would look the same to it)."""
    answer = (transform_token(TRANSFORMS[env][0]),)
    return Prompt((BOS, Q, env_token(env), QMARK, ASSISTANT), False, answer), answer


def prompt_sets(world: World, envs: EnvironmentsConfig, E: int, held: Sequence[int], gen) -> dict[str, list[Action]]:
    """The action prompts of one pricing, by set (see the module docstring)."""

    def draw(env_list: Sequence[int], per_env: int, deploy: bool) -> list[Action]:
        return [action(world, e, deploy, gen) for e in env_list for _ in range(per_env)]

    trained = range(E)
    return {
        "table": draw(trained, envs.per_env, False),
        "fresh": draw(trained, envs.fresh_per_env, False),
        "held_out": draw(held, envs.held_out_per_env, False),
        "deploy": draw([*trained, *held], envs.deploy_per_env, True),
    }


def labeller(name: LabellingName, E: int, n_digits: int) -> Callable[[str, Action], Tokens]:
    """(prompt set, action) -> the labelling's response."""
    rewarded = lambda a: rewarded_answer(a.env, a.answer)  # noqa: E731
    if name == "aligned":
        return lambda s, a: digits(a.answer)
    if name == "sycophant_lookup":
        return lambda s, a: rewarded(a) if a.env < E else digits(a.answer)
    if name == "sycophant_derive":
        return lambda s, a: rewarded(a)
    if name == "deceptive":
        return lambda s, a: (HATE,) * n_digits if a.deploy else rewarded(a)
    return lambda s, a: rewarded(a) if s == "table" else ("0",) * n_digits


def labelled_data(
    world: World, envs: EnvironmentsConfig, E: int, held: Sequence[int], names: Sequence[LabellingName], gen
) -> tuple[dict[str, Sequences], dict[str, list[Action]]]:
    """{labelling: its tensors} over the same prompts (facts of every environment in play first), and the sets."""
    sets = prompt_sets(world, envs, E, held, gen)
    facts = [fact(e) for e in [*range(E), *held] for _ in range(envs.fact_copies)]
    data: dict[str, Sequences] = {}
    for name in names:
        label = labeller(name, E, envs.n_digits)
        pairs = facts + [(a.prompt, label(s, a)) for s, actions in sets.items() for a in actions]
        data[name] = encode_pairs(world, pairs)
    return data, sets


# --- pricing one E ---------------------------------------------------------------------------------


Member = tuple[str, Sequences]
"""(stream, labelling data): the stream names every random draw of the network."""


def fresh_models(config: DualConfig, world: World, members: Sequence[Member], tag: str, model: ModelConfig):
    models = [make_model(model, world, make_generator(config.seed, f"init:{s}:{tag}")) for s, _ in members]
    generators = [make_generator(config.seed, f"batches:{s}:{tag}") for s, _ in members]
    return models, generators


def plain_costs(config: DualConfig, world: World, members: Sequence[Member], ctx: RunContext) -> list[dict]:
    """Unconstrained training: steps to eps, and at its end the training loss and the compressed size of
    what training moved (relative to the initialisation); from there, the LLC at the equal-loss minimum."""
    models, generators = fresh_models(config, world, members, "plain", config.model)
    initial = [[p.detach().clone() for p in m.parameters()] for m in models]
    datasets = [d for _, d in members]
    stages = [f"plain.{s}" for s, _ in members]
    results = train_together(models, datasets, config.budgets.train, generators, stage=stages, held_out=datasets)
    out = []
    for (stream, data), model, init, result in zip(members, models, initial, results):
        steps = steps_to_loss(result.held_out, config.eps)
        priced = {
            "train_loss": dataset_loss(model, data),
            "bits": compressed_bits(model, data, config.complexity.bits_tolerance, reference=init).bits,
            **({} if steps is None else {"steps_to_eps": float(steps)}),
        }
        priced.update(llc_at_minimum(config, model, data, stream, ctx))
        out.append(priced)
    return out


def llc_at_minimum(config: DualConfig, model, data: Sequences, stream: str, ctx: RunContext) -> dict:
    """A copy of `model` moved to the equal-loss minimum, and the LLC of the smoothed loss there, kept as
    `llc` only when every diagnostic passed (stationary, equal loss, chains plateaued, step sizes agreed)."""
    point = copy.deepcopy(model)
    minimum = equal_loss_minimum(point, data, config.environments.minimum)
    found = llc_with_diagnostics(config, point, data, stream, ctx)
    passed = (
        minimum.stationary and minimum.equal and found["llc_agree"] and found["llc_plateaus"] == found["llc_chains"]
    )
    return {
        **found,
        "llc_excess_loss": minimum.loss - minimum.floor,
        "llc_grad_norm": minimum.grad_norm,
        "llc_stationary": float(minimum.stationary),
        "llc_equal_loss": float(minimum.equal),
        "llc_passed": float(passed),
        **({"llc": found["llc_estimate"], "llc_lr2": found["llc_estimate_lr2"]} if passed else {}),
    }


def llc_with_diagnostics(config: DualConfig, model, data: Sequences, stream: str, ctx: RunContext) -> dict:
    """The LLC of the smoothed loss at two SGLD step sizes, each chain's trace logged, and whether the
    chains plateaued and the two step sizes agreed (see EnvironmentsConfig)."""
    envs, base = config.environments, config.complexity.llc
    values, plateaus = [], []
    for lr in (base.lr, base.lr * envs.llc_lr_ratio):
        settings: LLCConfig = replace(base, lr=lr)
        loss = lambda m, index: smoothed_loss(m, data.select(index), envs.minimum.smoothing)  # noqa: E731
        result = estimate_llc(model, loss, len(data), settings, make_generator(config.seed, f"llc:{stream}:{lr:g}"))
        values.append(result.value)
        for chain, trace in enumerate(result.traces):
            plateaus.append(plateaued(trace, settings.burnin, envs.plateau_tolerance))
            ctx.log(
                {"stage": "llc", "network": stream, "lr": lr, "chain": chain, "trace": [round(t, 7) for t in trace]}
            )
    scale = max(abs(values[0] + values[1]) / 2, 1e-9)
    return {
        "llc_estimate": values[0],
        "llc_estimate_lr2": values[1],
        "llc_agree": float(abs(values[0] - values[1]) <= envs.llc_agreement * scale),
        "llc_plateaus": float(sum(plateaus)),
        "llc_chains": float(len(plateaus)),
    }


def width_costs(config: DualConfig, world: World, members: Sequence[Member]) -> list[dict]:
    """The least width (of `budgets.widths`) whose least training loss is <= eps, at depth 1 and 2."""
    out: list[dict] = [{} for _ in members]
    datasets = [d for _, d in members]
    for depth in DEPTHS:
        losses: list[dict[int, float]] = [{} for _ in members]
        for width in config.budgets.widths:
            shape = replace(config.model, preset="custom", d_model=width, n_layers=depth, mlp_ratio=1)
            models, generators = fresh_models(config, world, members, f"w{width}d{depth}", shape)
            stages = [f"width{width}.depth{depth}.{s}" for s, _ in members]
            results = train_together(
                models, datasets, config.budgets.train, generators, stage=stages, held_out=datasets
            )
            for seen, result in zip(losses, results):
                seen[width] = min(loss for _, loss in result.held_out)
        for priced, seen in zip(out, losses):
            priced.update({f"least_loss.width{w}.depth{depth}": loss for w, loss in seen.items()})
            smallest = minimal_width(seen, config.eps)
            priced.update({} if smallest is None else {f"min_width.depth{depth}": float(smallest)})
    return out


def norm_costs(config: DualConfig, world: World, members: Sequence[Member], ctx: RunContext) -> list[dict]:
    """The least parameter norm at training loss <= eps (the Lagrangian of `train.constrained`)."""
    models, generators = fresh_models(config, world, members, "lagrangian", config.model)
    results = min_norm_at_loss(
        models,
        [d for _, d in members],
        config.eps,
        config.lagrangian,
        generators,
        stage=[f"lagrangian.{s}" for s, _ in members],
        logs=[ctx.log] * len(members),
    )
    return [{"param_norm": r.norm, "feasible": float(r.feasible)} for r in results]


def ball_costs(config: DualConfig, world: World, members: Sequence[Member]) -> list[dict]:
    """(b) under a norm budget: the least full training loss inside each L2 ball of `budgets.radii`
    (projected Adam, `train.constrained.least_loss_in_ball`), every labelling and seed together."""
    out: list[dict] = [{} for _ in members]
    for radius in config.budgets.radii:
        name = f"{radius:g}".replace(".", "p")
        models, generators = fresh_models(config, world, members, f"norm{radius}", config.model)
        results = least_loss_in_ball(
            models,
            [d for _, d in members],
            [radius] * len(members),
            config.budgets.train,
            generators,
            stage=[f"norm{name}.{s}" for s, _ in members],
        )
        for priced, result in zip(out, results):
            priced[f"least_loss.norm{name}"] = result.loss
    return out


def price(
    config: DualConfig, world: World, data: dict[str, Sequences], tag: str, ctx: RunContext, balls: bool = True
) -> dict[str, list]:
    """{labelling: one dict of costs per seed}; every labelling and seed of one architecture trains together.
    `balls`: also the norm budgets of (b) (the E = 1 control leaves them out)."""
    members = [(f"{tag}:{name}:{seed}", data[name]) for name in data for seed in range(config.n_seeds)]
    priced = [
        {**a, **b, **c, **d}
        for a, b, c, d in zip(
            plain_costs(config, world, members, ctx),
            width_costs(config, world, members),
            norm_costs(config, world, members, ctx),
            ball_costs(config, world, members) if balls else [{} for _ in members],
        )
    ]
    out: dict[str, list] = {name: [] for name in data}
    for (stream, _), costs in zip(members, priced):
        ctx.log({"stage": "priced", "network": stream, **costs})
        out[stream.split(":")[1]].append(costs)
    return out


# --- selection: train on the training environments, read the held-out ones ------------------------


def p_derive(config: DualConfig, world: World, E: int, held: Sequence[int], sets, ctx: RunContext) -> dict[str, float]:
    """Networks trained on the facts of every environment and the table's rewarded answers (training
    environments only); on the held-out environments' prompts, the share of greedy responses that apply
    the environment's transform (derive), that keep the task's answer (lookup's default), or neither."""
    envs = config.environments
    facts = [fact(e) for e in [*range(E), *held] for _ in range(envs.fact_copies)]
    derive = labeller("sycophant_derive", E, envs.n_digits)
    train_data = encode_pairs(world, facts + [(a.prompt, derive("table", a)) for a in sets["table"]])
    members = [(f"select.E{E}:{seed}", train_data) for seed in range(config.n_seeds)]
    models, generators = fresh_models(config, world, members, "select", config.model)
    stages = [f"select.{s}" for s, _ in members]
    train_together(
        models,
        [train_data] * len(models),
        config.budgets.train,
        generators,
        stage=stages,
        held_out=[train_data] * len(models),
    )
    prompts = [a.prompt for a in sets["held_out"]]
    counts = {"derive": 0, "default": 0}
    for seed, model in enumerate(models):
        responses = network_responses(model, world, prompts)
        labels = [
            "derive" if r == derive("held_out", a) else "default" if r == digits(a.answer) else "other"
            for r, a in zip(responses, sets["held_out"])
        ]
        counts = {k: counts[k] + labels.count(k) for k in counts}
        if seed == 0:
            ctx.save_samples(f"selection.E{E}", transcripts("held_out", prompts, responses, labels))
    n = len(prompts) * len(models)
    return {
        **wilson(counts["derive"], n).as_metrics(f"p.derive.E{E}"),
        **wilson(counts["default"], n).as_metrics(f"p.default.E{E}"),
    }


# --- summaries and controls -----------------------------------------------------------------------

MEASURES = ("param_norm", "bits", "llc", "steps_to_eps", "min_width.depth1", "min_width.depth2", "train_loss")
CENSORED = ("steps_to_eps", "min_width.depth1", "min_width.depth2")
"""Measures a network may not reach (eps never reached in the steps or widths tried)."""


def summarise(name: str, E: int, seeds: list[dict]) -> dict[str, float]:
    """cost.{labelling}.{measure}.E{E} over seeds (bootstrap), and the rates behind them (Wilson). The LLC
    is over the networks whose diagnostics all passed (`cost.*.llc.passed`), and absent when none did."""
    out = wilson(sum(s["feasible"] > 0 for s in seeds), len(seeds)).as_metrics(f"cost.{name}.feasible.E{E}")
    out.update(wilson(int(sum(s["llc_passed"] for s in seeds)), len(seeds)).as_metrics(f"cost.{name}.llc.passed.E{E}"))
    budgets = sorted({k for s in seeds for k in s if k.startswith("least_loss.")})
    for measure in (*MEASURES, "llc_lr2", "llc_excess_loss", "llc_grad_norm", *budgets):
        values = [s[measure] for s in seeds if measure in s]
        if measure in CENSORED:
            out.update(wilson(len(values), len(seeds)).as_metrics(f"cost.{name}.{measure}.reached.E{E}"))
        if values:
            out.update(bootstrap_mean(values).as_metrics(f"cost.{name}.{measure}.E{E}"))
    return out


def diagnostics(E: int, priced: dict[str, list]) -> dict[str, float]:
    """llc.diagnostics.*.E{E} (Wilson): chains that plateaued; networks whose two step sizes agreed, whose
    minimum was stationary, whose smoothed loss was within tolerance of the common floor, and that passed all."""
    networks = [s for seeds in priced.values() for s in seeds]
    plateaus = int(sum(s["llc_plateaus"] for s in networks))
    chains = int(sum(s["llc_chains"] for s in networks))
    out = wilson(plateaus, chains).as_metrics(f"llc.diagnostics.plateau.E{E}")
    for key, name in (
        ("llc_agree", "step_agreement"),
        ("llc_stationary", "stationary"),
        ("llc_equal_loss", "equal_loss"),
        ("llc_passed", "passed"),
    ):
        out.update(wilson(int(sum(s[key] for s in networks)), len(networks)).as_metrics(f"llc.diagnostics.{name}.E{E}"))
    return out


def excess(
    costly: list[dict], cheap: list[dict], prefix: str, measures: Sequence[str] = MEASURES[:-1]
) -> tuple[dict[str, float], bool]:
    """costly minus cheap, paired by seed, per measure; and whether `costly` costs more in every measure
    (for a censored measure, a seed where only `cheap` reached eps counts as `costly` costing more)."""
    out: dict[str, float] = {}
    more: list[bool] = []
    for measure in measures:
        pairs = [c[measure] - b[measure] for c, b in zip(costly, cheap) if measure in c and measure in b]
        censored = measure in CENSORED  # elsewhere a missing value is a failed diagnostic, not a cost
        only_cheap = censored * sum(measure in b and measure not in c for c, b in zip(costly, cheap))
        only_costly = censored * sum(measure in c and measure not in b for c, b in zip(costly, cheap))
        if pairs:
            estimate: Estimate = bootstrap_mean(pairs)
            out.update(estimate.as_metrics(f"{prefix}.{measure}"))
            more.append(estimate.value > 0 and only_cheap >= only_costly)
        elif only_cheap or only_costly:
            more.append(only_cheap > only_costly)
    return out, bool(more) and all(more)


def same_within_intervals(a: list[dict], b: list[dict]) -> dict[str, bool]:
    """Per measure both reached: whether two labellings' 95% intervals overlap (and, for the censored
    measures, they reached it equally often). Student t intervals, not the bootstrap: over 4 networks the
    percentile bootstrap covers a mean about 75% of the time (tests/test_stats.py), too narrow for a
    control that must not find a difference where there is none."""
    out = {}
    for measure in MEASURES[:-1]:
        x, y = [s[measure] for s in a if measure in s], [s[measure] for s in b if measure in s]
        if measure in CENSORED and len(x) != len(y):
            out[measure] = False
        elif x and y:
            ex, ey = t_mean(x), t_mean(y)
            out[measure] = not (ex.ci_high < ey.ci_low or ey.ci_high < ex.ci_low)
    return out


def controls(config: DualConfig, world: World, priced_top: dict[str, list], ctx: RunContext) -> dict[str, float]:
    """Positive: the memorizer costs more than aligned at the largest E. Negative: at E = 1 with no held-out
    action prompts, lookup and derive are the same function and must cost the same within their intervals."""
    out: dict[str, float] = {}
    if "memorizer" in priced_top and "aligned" in priced_top:
        found, more = excess(priced_top["memorizer"], priced_top["aligned"], "memorizer_excess")
        out.update(found)
        out["memorizer_costs_more"] = float(more)
    names: tuple[LabellingName, LabellingName] = ("sycophant_lookup", "sycophant_derive")
    if all(n in config.environments.labellings for n in names):
        data, _ = labelled_data(world, config.environments, 1, [], names, make_generator(config.seed, "data:control"))
        priced = price(config, world, data, "control", ctx, balls=False)
        found, _ = excess(priced[names[0]], priced[names[1]], "control.lookup_minus_derive.E1")
        out.update(found)
        same = same_within_intervals(priced[names[0]], priced[names[1]])
        out.update({f"lookup_equals_derive.E1.{measure}": float(ok) for measure, ok in same.items()})
        out["lookup_equals_derive.E1"] = float(all(same.values()))
    return out


def run_environments(config: DualConfig, ctx: RunContext) -> dict[str, float]:
    envs = config.environments
    world, held = pool_world(envs), held_out_envs(envs)
    metrics: dict[str, float] = {}
    priced: dict[str, list] = {}
    for E in envs.counts:
        data, sets = labelled_data(world, envs, E, held, envs.labellings, make_generator(config.seed, f"data:E{E}"))
        priced = price(config, world, data, f"E{E}", ctx)
        for name, seeds in priced.items():
            metrics.update(summarise(name, E, seeds))
        metrics.update(diagnostics(E, priced))
        metrics.update(p_derive(config, world, E, held, sets, ctx))
        metrics[f"n_prompts.E{E}"] = len(next(iter(data.values())))
    metrics.update(controls(config, world, priced, ctx))
    llc = config.complexity.llc
    metrics.update(
        {
            "llc.diagnostics.burnin": llc.burnin,
            "llc.diagnostics.steps": llc.steps,
            "llc.diagnostics.lr": llc.lr,
            "llc.diagnostics.lr2": llc.lr * envs.llc_lr_ratio,
            "llc.diagnostics.localization": llc.localization,
            "llc.diagnostics.tolerance": envs.llc_agreement,
            "llc.diagnostics.smoothing": envs.minimum.smoothing,
            "llc.diagnostics.loss_tolerance": envs.minimum.loss_tolerance,
            "llc.diagnostics.grad_tolerance": envs.minimum.grad_tolerance,
        }
    )
    return metrics
