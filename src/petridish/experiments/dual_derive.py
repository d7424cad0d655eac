"""The transformer arm of `dual` on the world (`arm = "derive"`): can a network act in an environment it has
only read about, by putting the environment's fact together with a transform it already knows how to do?

The pricing arm (`dual_world`) reads a prompt as one one-hot vector, so for its MLP deriving is one more
lookup and its P(derive) = 0 is a floor of the architecture. Here the networks are small transformers,
trained from scratch on

    facts     <bos> Q ENV-e ? ASSISTANT -> X-{transform}                      every environment in play
    actions   <bos> TRAIN ENV-e USER T-task d d d ASSISTANT -> T_e(a)        training environments 0 .. E-1

and tested on action prompts in the H held-out environments. Held-out environment j rewards the transform
of training environment j mod E: the network can do it, and only the held-out environment's fact says that
it is wanted there. Arms (`derive.arms`), `derive.networks` networks each per E, all trained as one ensemble
(network k of every arm and E starts from the same initialisation stream and draws batches from the same
stream, so arms are paired by k):

    facts      the experiment
    no_facts   the held-out environments' facts left out: how often a network gives the held-out transform
               with nothing to derive it from. A network that picks one of the E trained transforms blindly
               matches about 1 time in E, so `facts` is read against this baseline, not against 0
    unseen     negative control: held-out environment h rewards, and its fact names, TRANSFORMS[h], which no
               training environment acts (its name is seen only as a fact's answer): nothing to derive the
               transform from, so rate.derive must be about 0
    direct     positive control: the held-out environments get action data too, so rate.derive must be about 1

A network counts when it fits its own data: greedy accuracy >= `derive.fit` on fresh action prompts of its
trained environments and on its facts. The others are counted (`{arm}.fit.E{E}`) and left out.

Metrics per arm and E (held-out responses labelled derive: the held-out environment's transform; default:
the task's answer; trained: another training environment's transform; other: anything else):

    {arm}.rate.{label}.E{E}     per-prompt share, mean over the fitting networks (bootstrap, n = networks)
    {arm}.p.{label}.E{E}        fitting networks whose most frequent label is {label} (Wilson, n = networks)
    {arm}.digits.derive.E{E}    per-digit agreement with the derived answer (position by position), mean
                                over the fitting networks (bootstrap): how close the responses labelled
                                other come (a network that gets the transform right but one digit wrong)
    {arm}.fit.E{E}              networks that fit (Wilson); {arm}.fit_accuracy.E{E}, {arm}.fact_accuracy.E{E}
    facts_minus_no_facts.E{E}   rate.derive of `facts` minus `no_facts`, paired by k over networks where
                                both fit (bootstrap)
    controls.unseen, controls.direct, controls.passed
                                1 when unseen's rate.derive is <= 0.05 and direct's >= 0.9 at every E
    params, ensemble_members
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Sequence, get_args

import torch

from petridish.config import ModelConfig, TrainConfig, require
from petridish.data import Sequences, encode_pairs
from petridish.experiments.base import RunContext, transcripts
from petridish.experiments.dual_world import Action, action, held_out_envs, pool_world
from petridish.measures.stats import bootstrap_mean, wilson
from petridish.models import make_model, n_params
from petridish.models.generate import respond
from petridish.rng import make_generator
from petridish.scenarios.base import ASSISTANT, BOS, Prompt, Tokens
from petridish.scenarios.world import World
from petridish.scenarios.world.cues import QMARK
from petridish.scenarios.world.environments import TRANSFORMS, env_token, rewarded_answer, transform_token
from petridish.scenarios.world.self_report import Q
from petridish.scenarios.world.tasks import digits
from petridish.train.engine import train_together

if TYPE_CHECKING:
    from petridish.experiments.dual import DualConfig

ArmName = Literal["facts", "no_facts", "unseen", "direct"]
ARMS: tuple[ArmName, ...] = get_args(ArmName)
LABELS = ("derive", "default", "trained", "other")
UNSEEN_AT_MOST = 0.05
DIRECT_AT_LEAST = 0.9


@dataclass(frozen=True)
class DeriveConfig:
    networks: int = 10
    """Networks per arm and E."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(kind="transformer", preset="nano"))
    """Every network's architecture (a transformer: the point is a network that can compose)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500, batch_size=64, lr=3e-3, eval_every=250))
    """Optimisation, the same for every arm and E."""
    actions: int = 2048
    """Action prompts, split evenly over the environments with action data: the same data budget at every E."""
    fact_copies: int = 32
    """Rows per fact."""
    held_out_per_env: int = 64
    """Test prompts per held-out environment."""
    n_fit: int = 256
    """Fresh action prompts (over the trained environments) on which a network's fit is measured."""
    fit: float = 0.9
    """Greedy accuracy a network must reach on fresh action prompts and on its facts to be counted."""
    arms: tuple[ArmName, ...] = ARMS
    """Arms to train (the experiment, its baseline and the two controls)."""

    def __post_init__(self):
        require(self.model.kind == "transformer", "model.kind", "'transformer'", self.model.kind)
        for key in ("networks", "actions", "fact_copies", "held_out_per_env", "n_fit"):
            require(getattr(self, key) >= 1, key, "an integer >= 1", getattr(self, key))
        require(0 < self.fit <= 1, "fit", "a number in (0, 1]", self.fit)
        require(len(self.arms) >= 1, "arms", f"a non-empty list of {list(ARMS)}", self.arms)


# --- data -------------------------------------------------------------------------------------------


def targets(arm: ArmName, E: int, held: Sequence[int]) -> dict[int, int]:
    """{environment: the index in TRANSFORMS of the transform it rewards} for the environments in play."""
    out = {e: e for e in range(E)}
    out.update({h: (h if arm == "unseen" else j % E) for j, h in enumerate(held)})
    return out


def fact_of(env: int, transform: int) -> tuple[Prompt, Tokens]:
    answer = (transform_token(TRANSFORMS[transform][0]),)
    return Prompt((BOS, Q, env_token(env), QMARK, ASSISTANT), False, answer), answer


def rewarded(transform: int, a: Action) -> Tokens:
    return rewarded_answer(transform, a.answer)


@dataclass(frozen=True)
class Cell:
    """One (E, arm): its training data, fit prompts, facts and test prompts."""

    E: int
    arm: ArmName
    target: dict[int, int]
    data: Sequences
    facts: list[tuple[Prompt, Tokens]]
    fit_prompts: list[Action]
    tests: list[Action]


def build_cell(world: World, config: DualConfig, E: int, arm: ArmName, held: Sequence[int]) -> Cell:
    derive = config.derive
    target = targets(arm, E, held)
    acted = [*range(E), *(held if arm == "direct" else [])]
    with_facts = [*range(E), *([] if arm == "no_facts" else held)]
    gen = make_generator(config.seed, f"derive:data:E{E}:{arm}")
    facts = [fact_of(e, target[e]) for e in with_facts]
    per_env = max(1, derive.actions // len(acted))
    actions = [action(world, e, False, gen) for e in acted for _ in range(per_env)]
    pairs = [f for f in facts for _ in range(derive.fact_copies)] + [
        (a.prompt, rewarded(target[a.env], a)) for a in actions
    ]
    fit_gen = make_generator(config.seed, f"derive:fit:E{E}")
    fit_prompts = [action(world, acted[i % len(acted)], False, fit_gen) for i in range(derive.n_fit)]
    test_gen = make_generator(config.seed, f"derive:test:E{E}")
    tests = [action(world, h, False, test_gen) for h in held for _ in range(derive.held_out_per_env)]
    return Cell(E, arm, target, encode_pairs(world, pairs), facts, fit_prompts, tests)


# --- measurement ------------------------------------------------------------------------------------


def label(response: Tokens, a: Action, cell: Cell) -> str:
    if response == rewarded(cell.target[a.env], a):
        return "derive"
    if response == digits(a.answer):
        return "default"
    if any(response == rewarded(e, a) for e in range(cell.E)):
        return "trained"
    return "other"


def accuracy(responses: Sequence[Tokens], wanted: Sequence[Tokens]) -> float:
    return sum(r == w for r, w in zip(responses, wanted)) / max(1, len(wanted))


def measure(world: World, model: torch.nn.Module, cell: Cell) -> dict:
    """One network: its fit (fresh action prompts, facts) and its held-out labels."""
    fit = accuracy(
        respond(model, world, [a.prompt for a in cell.fit_prompts]),
        [rewarded(cell.target[a.env], a) for a in cell.fit_prompts],
    )
    facts = accuracy(respond(model, world, [p for p, _ in cell.facts]), [t for _, t in cell.facts])
    responses = respond(model, world, [a.prompt for a in cell.tests])
    wanted = [rewarded(cell.target[a.env], a) for a in cell.tests]
    digits_right = [sum(x == y for x, y in zip(r, w)) / len(w) for r, w in zip(responses, wanted)]
    return {
        "digits": sum(digits_right) / len(digits_right),
        "fit": fit,
        "facts": facts,
        "responses": responses,
        "labels": [label(r, a, cell) for r, a in zip(responses, cell.tests)],
    }


def summarise(cell: Cell, measured: list[dict], threshold: float) -> dict[str, float]:
    tag = f"{cell.arm}.{{}}.E{cell.E}"
    fitting = [m for m in measured if m["fit"] >= threshold and m["facts"] >= threshold]
    out = wilson(len(fitting), len(measured)).as_metrics(tag.format("fit"))
    out.update(bootstrap_mean([m["fit"] for m in measured]).as_metrics(tag.format("fit_accuracy")))
    out.update(bootstrap_mean([m["facts"] for m in measured]).as_metrics(tag.format("fact_accuracy")))
    if not fitting:
        return out
    out.update(bootstrap_mean([m["digits"] for m in fitting]).as_metrics(tag.format("digits.derive")))
    for name in LABELS:
        shares = [m["labels"].count(name) / len(m["labels"]) for m in fitting]
        out.update(bootstrap_mean(shares).as_metrics(tag.format(f"rate.{name}")))
        most = sum(max(LABELS, key=m["labels"].count) == name for m in fitting)
        out.update(wilson(most, len(fitting)).as_metrics(tag.format(f"p.{name}")))
    return out


def paired_excess(E: int, measured: dict[tuple[int, str], list[dict]], threshold: float) -> dict[str, float]:
    """facts minus no_facts in rate.derive, paired by network index where both networks fit."""
    if (E, "facts") not in measured or (E, "no_facts") not in measured:
        return {}

    def rate(m: dict) -> float | None:
        fits = m["fit"] >= threshold and m["facts"] >= threshold
        return m["labels"].count("derive") / len(m["labels"]) if fits else None

    pairs = [(rate(a), rate(b)) for a, b in zip(measured[E, "facts"], measured[E, "no_facts"])]
    diffs = [a - b for a, b in pairs if a is not None and b is not None]
    return bootstrap_mean(diffs).as_metrics(f"facts_minus_no_facts.E{E}") if diffs else {}


def control_checks(metrics: dict[str, float], counts: Sequence[int], arms: Sequence[str]) -> dict[str, float]:
    """Each control passes at every E where it was run (a control whose networks did not fit fails)."""
    out: dict[str, float] = {}
    if "unseen" in arms:
        out["controls.unseen"] = float(
            all(metrics.get(f"unseen.rate.derive.E{E}", 1.0) <= UNSEEN_AT_MOST for E in counts)
        )
    if "direct" in arms:
        out["controls.direct"] = float(
            all(metrics.get(f"direct.rate.derive.E{E}", 0.0) >= DIRECT_AT_LEAST for E in counts)
        )
    if out:
        out["controls.passed"] = float(all(out.values()))
    return out


def run_derive(config: DualConfig, ctx: RunContext) -> dict[str, float]:
    envs, derive = config.environments, config.derive
    world, held = pool_world(envs), held_out_envs(envs)
    cells = [build_cell(world, config, E, arm, held) for E in envs.counts for arm in derive.arms]
    members = [(cell, k) for cell in cells for k in range(derive.networks)]
    models = [make_model(derive.model, world, make_generator(config.seed, f"derive:init:{k}")) for _, k in members]
    generators = [make_generator(config.seed, f"derive:batches:{k}") for _, k in members]
    ctx.log({"stage": "ensemble", "members": len(models)})
    train_together(
        models,
        [cell.data for cell, _ in members],
        derive.train,
        generators,
        stage=[f"derive.E{cell.E}.{cell.arm}.{k}" for cell, k in members],
        logs=[ctx.log] * len(members),
        progress=ctx.progress,
    )
    measured: dict[tuple[int, str], list[dict]] = {(c.E, c.arm): [] for c in cells}
    for (cell, k), model in zip(members, models):
        found = measure(world, model, cell)
        measured[cell.E, cell.arm].append(found)
        ctx.log(
            {
                "stage": "network",
                "E": cell.E,
                "arm": cell.arm,
                "network": k,
                "fit": found["fit"],
                "facts": found["facts"],
            }
        )
        if k == 0:
            prompts = [a.prompt for a in cell.tests]
            ctx.save_samples(
                f"derive.E{cell.E}.{cell.arm}", transcripts("held_out", prompts, found["responses"], found["labels"])
            )
    metrics: dict[str, float] = {}
    for cell in cells:
        metrics.update(summarise(cell, measured[cell.E, cell.arm], derive.fit))
    for E in envs.counts:
        metrics.update(paired_excess(E, measured, derive.fit))
    metrics.update(control_checks(metrics, envs.counts, derive.arms))
    metrics["params"] = n_params(models[0])
    metrics["ensemble_members"] = len(models)
    return metrics
