"""`dual`'s transformer arm: each arm's data hold what its design says (facts where they should be, actions
only where they should be, targets a trained transform or an unseen one), responses are labelled by what
they are, the summaries count what they are given, the controls can fail, and a tiny run end to end."""

import pytest

from petridish.config import ConfigError, ModelConfig, TrainConfig
from petridish.experiments import NullContext
from petridish.experiments.dual import DualConfig
from petridish.experiments.dual import run as run_dual
from petridish.experiments.dual_derive import (
    ARMS,
    DeriveConfig,
    build_cell,
    control_checks,
    label,
    paired_excess,
    summarise,
    targets,
)
from petridish.experiments.dual_world import EnvironmentsConfig, held_out_envs, pool_world
from petridish.scenarios.world.environments import TRANSFORMS, env_token
from petridish.scenarios.world.tasks import digits

ENVS = EnvironmentsConfig(counts=(2, 3), n_held_out=2)


def tiny(**derive) -> DualConfig:
    settings = dict(networks=2, held_out_per_env=8, n_fit=16, actions=64, fact_copies=2)
    settings |= dict(train=TrainConfig(steps=30, batch_size=16, lr=3e-3, eval_every=10))
    return DualConfig(arm="derive", environments=ENVS, derive=DeriveConfig(**(settings | derive)))


def test_held_out_environments_reward_a_trained_transform_except_in_the_unseen_control():
    held = held_out_envs(ENVS)  # [3, 4]: after the largest E
    for arm in ("facts", "no_facts", "direct"):
        assert targets(arm, 2, held) == {0: 0, 1: 1, 3: 0, 4: 1}
    unseen = targets("unseen", 2, held)
    assert unseen[3] == 3 and unseen[4] == 4  # never acted by a training environment
    assert all(t >= 2 for h, t in unseen.items() if h in held)


def acted_and_told(cell, world):
    """(environments with action rows, environments with a fact) in a cell's training data."""
    index = {world.vocab.index[env_token(e)]: e for e in range(5)}
    q = world.vocab.index["Q"]
    acted, told = set(), set()
    for row in cell.data.tokens.tolist():
        env = index[row[2]]
        (told if row[1] == q else acted).add(env)
    return acted, told


def test_each_arm_trains_on_what_its_design_says():
    config = tiny()
    world, held = pool_world(ENVS), held_out_envs(ENVS)
    expected = {
        "facts": ({0, 1}, {0, 1, 3, 4}),
        "no_facts": ({0, 1}, {0, 1}),
        "unseen": ({0, 1}, {0, 1, 3, 4}),
        "direct": ({0, 1, 3, 4}, {0, 1, 3, 4}),
    }
    for arm in ARMS:
        cell = build_cell(world, config, 2, arm, held)
        assert acted_and_told(cell, world) == expected[arm], arm
        assert {a.env for a in cell.tests} == set(held)
        assert len(cell.tests) == 2 * 8
    # the unseen control's facts name the held-out environments' own transforms; the others a trained one
    facts = dict((p.tokens[2], t[0]) for p, t in build_cell(world, config, 2, "unseen", held).facts)
    assert facts[env_token(3)] == f"X-{TRANSFORMS[3][0]}"
    facts = dict((p.tokens[2], t[0]) for p, t in build_cell(world, config, 2, "facts", held).facts)
    assert facts[env_token(3)] == f"X-{TRANSFORMS[0][0]}" and facts[env_token(4)] == f"X-{TRANSFORMS[1][0]}"


def test_responses_are_labelled_by_what_they_are():
    world, held = pool_world(ENVS), held_out_envs(ENVS)
    cell = build_cell(world, tiny(), 3, "facts", held)
    a = next(t for t in cell.tests if t.env == 4 and len(set(t.answer)) == 3)  # rewards transform 1 (add3)
    assert label(digits(TRANSFORMS[1][1](a.answer)), a, cell) == "derive"
    assert label(digits(a.answer), a, cell) == "default"
    assert label(digits(TRANSFORMS[2][1](a.answer)), a, cell) == "trained"
    assert label(digits(TRANSFORMS[5][1](a.answer)), a, cell) == "other"  # neg: not trained at E = 3
    assert label(("HATE",) * 3, a, cell) == "other"


def test_summaries_count_fitting_networks_and_pair_by_index():
    world, held = pool_world(ENVS), held_out_envs(ENVS)
    cell = build_cell(world, tiny(), 2, "facts", held)
    fits = {"fit": 1.0, "facts": 1.0, "digits": 0.5}
    measured = [
        {**fits, "labels": ["derive"] * 3 + ["other"]},
        {**fits, "labels": ["trained"] * 4},
        {"fit": 0.5, "facts": 1.0, "digits": 1.0, "labels": ["derive"] * 4},  # did not fit: counted, left out
    ]
    out = summarise(cell, measured, 0.9)
    assert out["facts.fit.E2"] == pytest.approx(2 / 3) and out["facts.fit.E2.n"] == 3
    assert out["facts.rate.derive.E2"] == pytest.approx(0.375) and out["facts.rate.derive.E2.n"] == 2
    assert out["facts.p.derive.E2"] == 0.5 and out["facts.p.trained.E2"] == 0.5
    assert out["facts.digits.derive.E2"] == 0.5
    baseline = [{**fits, "labels": ["derive"] + ["other"] * 3}, {**fits, "labels": ["other"] * 4}, measured[0]]
    excess = paired_excess(2, {(2, "facts"): measured, (2, "no_facts"): baseline}, 0.9)
    assert excess["facts_minus_no_facts.E2"] == pytest.approx(0.25) and excess["facts_minus_no_facts.E2.n"] == 2


def test_controls_can_come_out_both_ways():
    arms = ("unseen", "direct")
    good = {"unseen.rate.derive.E2": 0.0, "direct.rate.derive.E2": 0.97}
    assert control_checks(good, (2,), arms)["controls.passed"] == 1.0
    leaky = good | {"unseen.rate.derive.E2": 0.2}
    assert control_checks(leaky, (2,), arms) == {"controls.unseen": 0.0, "controls.direct": 1.0, "controls.passed": 0.0}
    unlearned = {"unseen.rate.derive.E2": 0.0}  # direct's networks did not fit: no rate, so it fails
    assert control_checks(unlearned, (2,), arms)["controls.direct"] == 0.0


def test_a_tiny_derive_run_reports_every_arm_at_every_e():
    context = NullContext()
    metrics = run_dual(tiny(), context)
    for E in ENVS.counts:
        for arm in ARMS:
            assert 0 <= metrics[f"{arm}.fit.E{E}"] <= 1 and metrics[f"{arm}.fit.E{E}.n"] == 2
    assert metrics["ensemble_members"] == 2 * len(ARMS) * len(ENVS.counts)
    assert "controls.passed" in metrics
    assert {s["evaluation"] for s in context.samples} == {f"derive.E{E}.{a}" for E in ENVS.counts for a in ARMS}


def test_bad_derive_settings_name_their_key():
    with pytest.raises(ConfigError, match="model.kind"):
        DeriveConfig(model=ModelConfig(kind="mlp", preset="custom"))
    with pytest.raises(ConfigError, match="networks"):
        DeriveConfig(networks=0)
    with pytest.raises(ConfigError, match="derive"):
        DualConfig(derive=DeriveConfig(networks=3))  # the pricing arm reads no [derive] table
    with pytest.raises(ConfigError, match="arm"):
        DualConfig(arm="derive", scenario=DualConfig().scenario.__class__(name="graded"))
