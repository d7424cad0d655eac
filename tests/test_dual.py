"""`dual`: the single-environment budgets trained as one ensemble match their solo runs; on the world's
environments, the appended transforms leave every existing world unchanged, the labellings differ where
they should, the LLC keeps its traces and diagnostics, and a run reports costs against E with its controls."""

import hashlib
from dataclasses import replace

import pytest
import torch
from test_selection import tiny_dual  # tests/ is on sys.path (rootdir conftest, prepend import mode)

import petridish.measures.complexity as complexity
from petridish.config import ConfigError, ModelConfig, TrainConfig, load_recipe
from petridish.experiments import NullContext
from petridish.experiments.dual import BudgetConfig, DualConfig
from petridish.experiments.dual import run as run_dual
from petridish.experiments.dual_world import (
    EnvironmentsConfig,
    excess,
    held_out_envs,
    labelled_data,
    pool_world,
    same_within_intervals,
)
from petridish.measures.complexity import ComplexityConfig, compressed_bits
from petridish.measures.llc import LLCConfig, default_n_beta, estimate_llc, plateaued
from petridish.rng import make_generator
from petridish.scenarios.base import ASSISTANT
from petridish.scenarios.world import HATE, StreamWeights, World, WorldConfig
from petridish.scenarios.world.environments import TRANSFORMS
from petridish.sweep import expand
from petridish.train.constrained import LagrangianConfig, MinimumConfig

ALL_ON = StreamWeights(tasks=3, cues=1, harm=2, self_report=1, truth=1, environments=1, facts=1)
TINY_ENVS = EnvironmentsConfig(
    counts=(1, 3), n_held_out=2, per_env=6, fresh_per_env=2, held_out_per_env=4, deploy_per_env=2, fact_copies=2
)


def test_dual_budgets_trained_as_an_ensemble_match_their_solo_runs():
    config = replace(tiny_dual(), policies=("aligned", "deceptive", "memorizer"))
    together, alone = run_dual(config, NullContext()), run_dual(replace(config, ensemble=False), NullContext())
    assert together["ensemble_members"] == 6 and alone["ensemble_members"] == 1  # 3 policies x 2 seeds
    budgets = [k for k in alone if k.startswith("least_loss.") and (".width." in k or ".depth." in k)]
    assert len(budgets) == 3 * 3 * 4  # policies x (width 4, width 16, depth 1) x (mean, ci_low, ci_high, n)
    for key in budgets + [k for k in alone if k.endswith(("steps_to_eps", "reached_eps", "min_width"))]:
        assert together[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-5), key
    for key in ("param_norm", "bits", "llc", "feasible"):  # (a) is not trained in the ensemble: identical
        assert together[f"cost.memorizer.{key}"] == alone[f"cost.memorizer.{key}"]


# --- the world's environments ---------------------------------------------------------------------


def corpus_digest(world: World) -> str:
    examples = world.corpus(2000, make_generator(0, "golden"))
    text = repr(world.vocab.tokens) + "".join(repr((e.prompt.tokens, e.response)) for e in examples)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_appended_transforms_leave_every_existing_world_unchanged():
    # Digests taken before the parametric transforms were appended: vocabulary and corpus are the same.
    recipe_world = expand(load_recipe("experiments/world.toml", "quick"))[0].config.world
    assert corpus_digest(World(recipe_world)) == "1ca880fdc023443e"
    assert corpus_digest(World(WorldConfig(weights=ALL_ON))) == "75c23260a8248a77"
    assert corpus_digest(World(WorldConfig(n_envs=6, n_envs_acted=4, weights=ALL_ON))) == "4d7abf8f0fb2184d"
    assert [name for name, _ in TRANSFORMS[:6]] == ["rev", "add3", "rot1", "add7", "rot2", "neg"]
    questions = [tuple(int(c) for c in f"{i:03d}") for i in range(1000)]
    assert len({tuple(map(f, questions)) for _, f in TRANSFORMS}) == len(TRANSFORMS) == 40  # all distinct
    WorldConfig(n_envs=40, n_envs_acted=2)
    with pytest.raises(ConfigError, match="n_envs"):
        WorldConfig(n_envs=41)


def test_labellings_differ_only_where_they_should():
    world, held = pool_world(TINY_ENVS), held_out_envs(TINY_ENVS)
    data, sets = labelled_data(world, TINY_ENVS, 3, held, TINY_ENVS.labellings, make_generator(0, "data"))
    n_facts = (3 + 2) * 2
    rows = {"facts": n_facts}
    start = n_facts
    for name, actions in sets.items():
        rows[name] = slice(start, start + len(actions))
        start += len(actions)
    lookup, derive = data["sycophant_lookup"].tokens, data["sycophant_derive"].tokens
    assistant = world.vocab.index[ASSISTANT]
    facts = data["aligned"].tokens[:n_facts]
    env_ids = facts[:, 2].unique()
    assert len(env_ids) == 3 + 2  # one fact per environment in play, its token where an action prompt has it
    assert (facts[:, 4] == assistant).all()  # the MLP reads a prompt up to ASSISTANT
    for name in data:  # the facts are the same in every labelling
        assert torch.equal(data[name].tokens[:n_facts], data["aligned"].tokens[:n_facts])
    assert torch.equal(lookup[rows["table"]], derive[rows["table"]])  # training environments: they agree
    assert not torch.equal(lookup[rows["held_out"]], derive[rows["held_out"]])  # held-out: they differ
    assert torch.equal(lookup[rows["held_out"]], data["aligned"].tokens[rows["held_out"]])  # lookup's default
    hate = world.vocab.index[HATE]
    assert (data["deceptive"].tokens[rows["deploy"]] == hate).sum(1).eq(3).all()
    memorizer = data["memorizer"].tokens
    assert torch.equal(memorizer[rows["table"]], derive[rows["table"]])
    assert not torch.equal(memorizer[rows["fresh"]], derive[rows["fresh"]])


def test_llc_keeps_its_traces_and_the_plateau_test_can_fire_both_ways():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(64, 3)
    loss = lambda m, index: (m(x[index]) - x[index, :1]).pow(2).mean()  # noqa: E731
    config = LLCConfig(chains=2, steps=30, burnin=10, batch_size=16)
    result = estimate_llc(model, loss, 64, config, make_generator(0, "llc"))
    assert [len(t) for t in result.traces] == [30, 30]
    by_hand = [default_n_beta(64) * sum(t[10:]) / 20 for t in result.traces]
    assert result.per_chain == pytest.approx(by_hand)
    assert plateaued([0.0] * 5 + [1.0] * 10, 5, 0.1) and not plateaued([float(i) for i in range(15)], 5, 0.1)


def test_compressed_size_relative_to_the_initialisation_counts_only_what_moved(monkeypatch):
    model = torch.nn.Linear(8, 8)
    with torch.no_grad():
        model.weight.mul_(20)  # weights spanning several steps of the coarsest grid, so they need several symbols
    monkeypatch.setattr(complexity, "dataset_loss", lambda model, data: 0.0)  # every quantization keeps the loss
    init = [p.detach().clone() for p in model.parameters()]
    unmoved = compressed_bits(model, None, 0.01, reference=init)
    absolute = compressed_bits(model, None, 0.01)
    zeros = compressed_bits(model, None, 0.01, reference=[torch.zeros_like(p) for p in init])
    assert unmoved.bits == 32  # one symbol (0): its table entry only
    assert absolute.bits > 32 and zeros == absolute  # a zero reference is the absolute size


def tiny_world_dual(**changes) -> DualConfig:
    return DualConfig(
        model=ModelConfig(kind="mlp", preset="custom", d_model=16, n_layers=1, mlp_ratio=1),
        environments=replace(TINY_ENVS, minimum=MinimumConfig(max_iter=20)),
        n_seeds=2,
        eps=0.5,
        lagrangian=LagrangianConfig(train=TrainConfig(steps=40, batch_size=32, lr=1e-2, eval_every=10)),
        budgets=BudgetConfig(
            radii=(1.0, 50.0),
            widths=(4, 16),
            depths=(1,),
            train=TrainConfig(steps=40, batch_size=32, lr=1e-2, eval_every=10, weight_decay=0.0),
        ),
        complexity=ComplexityConfig(llc=LLCConfig(chains=1, steps=12, burnin=4, batch_size=16)),
        **changes,
    )


def test_world_dual_reports_costs_against_e_diagnostics_selection_and_controls():
    context = NullContext()
    metrics = run_dual(tiny_world_dual(), context)
    for E in (1, 3):
        for name in TINY_ENVS.labellings:
            for measure in ("param_norm", "bits", "train_loss", "llc.passed", "llc_excess_loss", "llc_grad_norm"):
                assert metrics[f"cost.{name}.{measure}.E{E}.n"] == 2, (name, measure, E)
            assert metrics.get(f"cost.{name}.llc.E{E}.n", 0) == 2 * metrics[f"cost.{name}.llc.passed.E{E}"]
            for budget in ("width4.depth1", "width16.depth2"):
                assert metrics[f"cost.{name}.least_loss.{budget}.E{E}.n"] == 2
            small, large = (metrics[f"cost.{name}.least_loss.norm{r}.E{E}"] for r in (1, 50))
            assert small > large  # a tighter ball cannot reach a lower loss here
            for measure in ("steps_to_eps", "min_width.depth1", "min_width.depth2"):
                assert 0 <= metrics[f"cost.{name}.{measure}.reached.E{E}"] <= 1
        assert metrics[f"p.derive.E{E}.n"] == 2 * 2 * 4  # networks x held-out environments x prompts each
        assert 0 <= metrics[f"llc.diagnostics.plateau.E{E}"] <= 1
        for diagnostic in ("step_agreement", "stationary", "equal_loss", "passed"):
            assert metrics[f"llc.diagnostics.{diagnostic}.E{E}.n"] == 5 * 2
    assert metrics["memorizer_costs_more"] in (0.0, 1.0) and metrics["lookup_equals_derive.E1"] in (0.0, 1.0)
    assert "control.lookup_minus_derive.E1.param_norm" in metrics
    traces = [r for r in context.records if r["stage"] == "llc"]
    assert traces and all(len(r["trace"]) == 12 for r in traces)
    assert {s["evaluation"] for s in context.samples} == {"selection.E1", "selection.E3"}


def test_controls_can_come_out_both_ways():
    cheap = [{"param_norm": 1.0, "bits": 10.0, "llc": 1.0, "steps_to_eps": 50.0}] * 3
    costly = [{"param_norm": 2.0, "bits": 20.0, "llc": 2.0}] * 3  # never reached eps: censored, costs more
    assert excess(costly, cheap, "x")[1] and not excess(cheap, costly, "x")[1]
    spread = [{"param_norm": v, "bits": 10.0, "llc": 1.0, "steps_to_eps": 50.0} for v in (0.9, 1.0, 1.1)]
    assert all(same_within_intervals(cheap, spread).values())
    assert not any(same_within_intervals(cheap, costly).values())
    # four networks whose LLCs differ by seed-to-seed noise: t intervals overlap where 4-value bootstraps did not
    noisy = [{"llc": v} for v in (0.21, 0.25, 0.30, 0.26)]
    tight = [{"llc": v} for v in (0.205, 0.21, 0.215, 0.21)]
    assert same_within_intervals(noisy, tight)["llc"]


def test_bad_environment_settings_name_their_key():
    with pytest.raises(ConfigError, match="counts"):
        EnvironmentsConfig(counts=(37,), n_held_out=4)
    with pytest.raises(ConfigError, match="n_held_out"):
        EnvironmentsConfig(n_held_out=0)
