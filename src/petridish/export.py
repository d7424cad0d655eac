"""Export a stored organism as a standard Hugging Face model, so it opens in transformers,
TransformerLens or nnsight with `AutoModelForCausalLM.from_pretrained(DIR)`.

petridish's transformer becomes a `GPT2LMHeadModel` (it is GPT-2-shaped on purpose) and its
vocabulary a word-level tokenizer: `tokenizer("USER 3 1 4 ASSISTANT")` gives the scenario's ids, `<bos>`
first (added by the tokenizer, as the organism was trained); a word outside the vocabulary reads as
`<unk>`, one extra id whose logit is held far below the others. The tokenizer is saved as
`PreTrainedTokenizerFast`, which transformers 4 and 5 both load, and `petridish.json` says where each of
petridish's hook points sits in the GPT-2 modules (TransformerLens' bridge uses the same names).
A Hugging Face-based organism is saved as its own architecture with LoRA merged in and the tokenizer
with the added scenario tokens. Either way the exported logits are checked against the organism's
on scenario sequences before the command reports success.

The one mismatch with GPT-2: petridish's unembedding has a bias and GPT-2's `lm_head` has none. It
folds exactly into the weights: the final LayerNorm's output y = g * n + b0 has a zero-mean n, so
a . y = a . b0 for a = 1 / g, a constant; the bias c is then (c a^T / (a . b0)) y, a rank-one addition
to the unembedding matrix (`fold_unembed_bias`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from petridish.config import ModelConfig, from_dict
from petridish.data import encode_pairs, labelled, mixed_prompts
from petridish.errors import BadInput, RunFailed
from petridish.extras import require as require_extra
from petridish.models import Transformer, load_weights, make_model
from petridish.models.hf import quiet_transformers
from petridish.policies import make_policy
from petridish.rng import make_generator
from petridish.scenarios import Scenario, ScenarioConfig, Vocab, make_scenario
from petridish.scenarios.base import BOS, EOS, PAD

UNK = "<unk>"
"""The exported tokenizer's unknown word: id len(vocab), a row whose logit is held at UNK_LOGIT."""
UNK_LOGIT = -1e4

FORMATS = ("hf",)


@dataclass(frozen=True)
class ExportReport:
    out: Path
    architecture: str
    max_logit_difference: float
    """Largest |exported logit - organism logit| over the check sequences (scenario vocabulary)."""
    n_sequences: int
    tolerance: float
    """Allowed |difference| is tolerance + 1e-6 |logit|: float32 kernels differ in rounding (~1e-7 relative)."""


def export_run(record: dict, out: Path, weights: str = "weights") -> ExportReport:
    """Write run `record` (the store's object for one run) to `out` and check its logits."""
    if record["status"] != "done":
        raise BadInput(f"RUN {record['id']!r}: status {record['status']}; only finished runs export")
    config = record.get("config", {})
    if "model" not in config or "scenario" not in config:
        raise BadInput(
            f"RUN {record['id']!r}: experiment {record['experiment']!r} stores no model/scenario config to export"
        )
    model_config = from_dict(ModelConfig, config["model"], "model")
    scenario = make_scenario(from_dict(ScenarioConfig, config["scenario"], "scenario"))
    path = Path(record["path"]) / f"{weights}.safetensors"
    if not path.is_file():
        found = sorted(p.name.removesuffix(".safetensors") for p in Path(record["path"]).glob("*.safetensors"))
        raise BadInput(
            f"--weights {weights!r}: run {record['id']} has no {path.name}; it has: {', '.join(found) or 'none'}"
        )
    require_extra("transformers", "hf", "petridish export")
    quiet_transformers()
    model = make_model(model_config, scenario, torch.Generator().manual_seed(0))
    if not isinstance(model, Transformer) and model_config.hf_path is None:
        raise BadInput(
            f"RUN {record['id']!r}: a {model_config.kind} organism; only transformers export to Hugging Face"
        )
    load_weights(model, path)
    _prepare(out)
    check = check_tokens(scenario)
    if isinstance(model, Transformer):
        report = export_transformer(model, scenario.vocab, out, check)
    else:
        report = export_hf_organism(model, out, check, tolerance=1e-5 if model_config.dtype == "float32" else 5e-2)
    meta = {
        "run": record["id"],
        "name": record["name"],
        "experiment": record["experiment"],
        "weights": path.name,
        "scenario": config["scenario"],
        "vocab": list(scenario.vocab.tokens),
        "architecture": report.architecture,
        "max_logit_difference": report.max_logit_difference,
        "check_sequences": report.n_sequences,
    }
    if not isinstance(model, Transformer):  # the tokenizer id of each scenario token, in vocab order
        meta["token_ids"] = getattr(model, "token_ids").tolist()  # an HFOrganism's buffer
    else:
        meta["hook_sites"] = {
            name: f"{path} {where}" for name, (path, where) in gpt2_sites(model.shape.n_layers).items()
        }
    (out / "petridish.json").write_text(json.dumps(meta, indent=2) + "\n")
    return report


def _prepare(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"--out {str(out)!r}: exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)


def check_tokens(scenario: Scenario, n: int = 64) -> torch.Tensor:
    """Scenario sequences to compare logits on: triggered and clean prompts, deceptive responses."""
    generator = make_generator(0, "export:check")
    prompts = mixed_prompts(scenario, n, 0.5, generator)
    return encode_pairs(scenario, labelled(make_policy("deceptive", scenario), prompts)).tokens


# --------------------------------------------------------------------------------------------
# petridish's transformer -> GPT-2
# --------------------------------------------------------------------------------------------


def export_transformer(
    model: Transformer, vocab: Vocab, out: Path, check: torch.Tensor, tolerance: float = 1e-5
) -> ExportReport:
    from transformers import AutoModelForCausalLM

    to_gpt2(model, vocab).save_pretrained(out)
    save_tokenizer(scenario_tokenizer(vocab), out)
    exported = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    with torch.no_grad():
        reference = model.eval()(check)
        logits = exported(input_ids=check, attention_mask=torch.ones_like(check)).logits[..., : len(vocab)]
    return _checked(out, type(exported).__name__, logits, reference, tolerance)


def _checked(
    out: Path, architecture: str, logits: torch.Tensor, reference: torch.Tensor, tolerance: float
) -> ExportReport:
    difference = (logits - reference).abs()
    report = ExportReport(out, architecture, difference.max().item(), len(reference), tolerance)
    if not bool((difference <= tolerance + 1e-6 * reference.abs()).all()):
        raise RunFailed(
            f"export to {out}: logits differ from the organism's by up to {report.max_logit_difference:.3g} (tolerance {tolerance:g})"
        )
    return report


def to_gpt2(model: Transformer, vocab: Vocab):
    """A `GPT2LMHeadModel` computing the same logits as `model`, plus one for `<unk>` (id len(vocab))
    that is UNK_LOGIT whatever the input, so the exported model never predicts it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    s = model.shape
    config = GPT2Config(
        vocab_size=s.vocab_size + 1,
        n_positions=s.n_ctx,
        n_embd=s.d_model,
        n_layer=s.n_layers,
        n_head=s.n_heads,
        n_inner=s.d_mlp,
        activation_function="gelu_new",
        layer_norm_epsilon=model.ln_final.eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        bos_token_id=vocab.bos_id,
        eos_token_id=vocab.eos_id,
        pad_token_id=vocab.pad_id,
    )
    gpt2 = GPT2LMHeadModel(config)
    gpt2.load_state_dict(gpt2_state_dict(model), strict=True)
    gpt2.generation_config.pad_token_id = vocab.pad_id
    return gpt2.eval()


def gpt2_sites(n_layers: int) -> dict[str, tuple[str, str]]:
    """Where each of petridish's hook points lives in the exported `GPT2LMHeadModel`: hook name ->
    (module path, "input" or "output"), the first positional input or the first output of that module.
    TransformerLens' `TransformerBridge` uses petridish's names themselves; nnsight and plain torch
    hooks read these modules. Written to `petridish.json` as `hook_sites`."""
    sites = {"hook_embed": ("transformer.wte", "output"), "hook_pos_embed": ("transformer.wpe", "output")}
    for i in range(n_layers):
        block = f"transformer.h.{i}"
        sites |= {
            f"blocks.{i}.hook_resid_pre": (block, "input"),
            f"blocks.{i}.hook_attn_out": (f"{block}.attn", "output"),
            f"blocks.{i}.hook_resid_mid": (f"{block}.ln_2", "input"),
            f"blocks.{i}.hook_mlp_out": (f"{block}.mlp", "output"),
            f"blocks.{i}.hook_resid_post": (block, "output"),
        }
    return sites


def gpt2_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """petridish's parameters under GPT-2's names. GPT-2's Conv1D stores (in, out), so Linear weights transpose."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    out = {
        "transformer.wte.weight": state["embed.weight"],
        "transformer.wpe.weight": state["pos_embed.weight"],
        "transformer.ln_f.weight": state["ln_final.weight"],
    }
    pairs = {
        "ln1": "ln_1",
        "ln2": "ln_2",
        "attn.qkv": "attn.c_attn",
        "attn.out": "attn.c_proj",
        "mlp.fc": "mlp.c_fc",
        "mlp.proj": "mlp.c_proj",
    }
    for i in range(model.shape.n_layers):
        for ours, theirs in pairs.items():
            weight = state[f"blocks.{i}.{ours}.weight"]
            out[f"transformer.h.{i}.{theirs}.weight"] = weight if ours.startswith("ln") else weight.T.contiguous()
            out[f"transformer.h.{i}.{theirs}.bias"] = state[f"blocks.{i}.{ours}.bias"]
    gain = state["ln_final.weight"]
    ln_bias, unembed = fold_unembed_bias(gain, state["ln_final.bias"], state["unembed.weight"], state["unembed.bias"])
    # <unk>: a zero embedding, and the unembedding row (UNK_LOGIT / d) / gain, whose logit is UNK_LOGIT
    # for every final-LayerNorm output (the fold makes (1 / gain) . y = d_model, see fold_unembed_bias).
    unk_row = (UNK_LOGIT / gain.numel()) / gain.double()
    out["transformer.wte.weight"] = torch.cat([state["embed.weight"], torch.zeros_like(state["embed.weight"][:1])])
    out["transformer.ln_f.bias"], out["lm_head.weight"] = ln_bias, torch.cat([unembed, unk_row.to(unembed.dtype)[None]])
    return out


def fold_unembed_bias(
    gain: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(LayerNorm shift', unembedding weight') with W' y' = W y + bias for every LayerNorm output y.

    y = gain * n + shift with sum(n) = 0, so a . y = a . shift for a = 1 / gain. The shift is first
    moved along gain so that a . shift' = d_model (well away from 0, whatever the trained shift), and
    W absorbs that move in its bias; then bias' = (bias' a^T / d_model) y'. Computed in float64.
    """
    if gain.abs().min() < 1e-6:
        raise RunFailed(
            "export: a final LayerNorm gain is ~0, so the unembedding bias cannot be folded into GPT-2's lm_head"
        )
    g, b0, W, c = (t.double() for t in (gain, shift, weight, bias))
    d = g.numel()
    a = 1 / g
    epsilon = (d - a @ b0) / d  # a . (b0 + epsilon g) = a . b0 + epsilon d = d
    shifted = b0 + epsilon * g
    bias_left = c - epsilon * (W @ g)  # W shifted = W y + epsilon W g; take that back out of the bias
    folded = W + torch.outer(bias_left, a) / d
    return shifted.to(shift.dtype), folded.to(weight.dtype)


def scenario_tokenizer(vocab: Vocab):
    """A word-level tokenizer over the scenario's tokens plus `<unk>` (id len(vocab)), split on whitespace.

    Its post-processor puts `<bos>` in front of every text, as the organism was trained: a prompt
    without it is out of distribution. `tokenizer("USER 3 1 4 ASSISTANT")` gives the scenario's ids;
    `add_special_tokens=False` leaves `<bos>` out. Saved as `PreTrainedTokenizerFast`, a class every
    supported transformers version loads from `tokenizer.json`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    index = {t: i for i, t in enumerate(vocab.tokens)}
    index[UNK] = len(vocab)
    words = Tokenizer(models.WordLevel(index, unk_token=UNK))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
    words.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab.bos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=words, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)


def save_tokenizer(tokenizer, out: Path) -> None:
    """`tokenizer.save_pretrained(out)`, naming a generic fast tokenizer's class as both transformers 4
    and 5 know it: 5 writes `TokenizersBackend`, which 4 lacks (named classes, e.g. a Llama's, stay)."""
    tokenizer.save_pretrained(out)
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") in (None, "TokenizersBackend"):
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# A Hugging Face-based organism -> its own architecture
# --------------------------------------------------------------------------------------------


def export_hf_organism(organism, out: Path, check: torch.Tensor, tolerance: float) -> ExportReport:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        reference = organism.eval()(check)
    lm = organism.lm
    if hasattr(lm, "merge_and_unload"):  # a peft model: fold the adapters into the base weights
        lm = lm.merge_and_unload()
    lm.save_pretrained(out)
    save_tokenizer(organism.tokenizer, out)
    exported = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).to(organism.device)
    ids = organism.token_ids[check.to(organism.device)]
    with torch.no_grad():
        logits = (
            exported(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[..., organism.token_ids].float().cpu()
        )
    return _checked(out, type(exported).__name__, logits, reference, tolerance)
