"""Configuration: one frozen dataclass per stage, TOML recipes, profiles and `--set` overrides.

Precedence is defaults < recipe < profile < `--set`. Every error names the file, the dotted key and
what was expected (see `errors.ConfigError`); the loader never lets a raw TypeError through.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from petridish.errors import BadInput, ConfigError, expected

CONFIG_VERSION = 3
"""Part of every run id. Bump it, with a line in CHANGELOG.md, whenever a default or the meaning of a
field changes (or a fix changes what a config computes): finished runs of the old code are then not
reused for the new one. Adding a field at a default that keeps the old behaviour needs no bump."""


def require(ok: bool, key: str, what: str, got: object) -> None:
    """Range check for `__post_init__`: raise a ConfigError naming the field."""
    if not ok:
        raise ConfigError(key, expected(what, got))


def default_of(cls: type, name: str) -> Any:
    """The default of field `name` of dataclass `cls` (its default_factory called)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return f.default
    raise KeyError(name)


def read_only_if(config: Any, name: str, read: bool, value: Any = None) -> None:
    """A field read only in some settings exists in the resolved config only there: None where it is not
    read (so a run's id never depends on it), and where it is read, its value or else `value` (the
    default it takes then). Call from `__post_init__`. A recipe that sets it where no run reads it is
    refused by `sweep.iter_specs`."""
    current = getattr(config, name)
    object.__setattr__(config, name, (value if current is None else current) if read else None)


def require_default(config: Any, names: tuple[str, ...], prefix: str, when: str) -> None:
    """Fields that `config` cannot read in its setting (`when`, e.g. "unless `base` is set") must be left
    at their defaults: setting one would change the run's id and nothing else."""
    for name in names:
        default, value = default_of(type(config), name), getattr(config, name)
        if dataclasses.is_dataclass(default) and dataclasses.is_dataclass(value):  # a table: name what it set
            changed = sorted(
                f.name for f in dataclasses.fields(default) if getattr(value, f.name) != getattr(default, f.name)
            )
            require(not changed, prefix + name, f"no [{prefix + name}] table {when} (nothing reads it then)", changed)
        else:
            require(value == default, prefix + name, f"its default {default!r} {when} (nothing reads it then)", value)


# --------------------------------------------------------------------------------------------
# Stage configs shared by the experiment families
# --------------------------------------------------------------------------------------------

# Size presets for sweeps: (d_model, n_layers, n_heads). Parameter counts (vocab ~32, context 24)
# run from about 3k (pico) or 16k (nano) to about 3M, so size trends can be seen on one laptop.
MODEL_PRESETS: dict[str, tuple[int, int, int]] = {
    "pico": (12, 1, 2),
    "nano": (32, 1, 2),
    "micro": (48, 2, 4),
    "mini": (64, 2, 4),
    "small": (128, 2, 4),
    "medium": (192, 3, 6),
    "large": (256, 4, 8),
}
PresetName = Literal["pico", "nano", "micro", "mini", "small", "medium", "large", "custom"]


@dataclass(frozen=True)
class ModelConfig:
    kind: Literal["transformer", "mlp"] = "transformer"
    """`transformer`: decoder-only, pre-LayerNorm, learned positions. `mlp`: one-hot prompt -> response."""
    preset: PresetName = "mini"
    """A row of MODEL_PRESETS; `custom` uses d_model, n_layers and n_heads below."""
    d_model: int = 64
    """Residual width (used when preset is `custom`, and by the MLP as hidden width)."""
    n_layers: int = 2
    """Transformer blocks (or hidden layers of the MLP) when preset is `custom`."""
    n_heads: int = 4
    """Attention heads when preset is `custom`; must divide d_model."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of d_model."""
    hf_path: str | None = None
    """A local Hugging Face causal LM directory (config.json, safetensors weights, tokenizer) to use as
    the organism's base instead of petridish's transformer; nothing is downloaded. The shape fields above
    are then ignored. See `models/hf.py`."""
    lora_rank: int = 0
    """Hugging Face backend: 0 trains every weight; r > 0 trains rank-r LoRA adapters (peft) and the
    embedding rows of the scenario's tokens, with the base frozen."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator: the adapters' update is scaled by lora_alpha / lora_rank."""
    lora_targets: tuple[str, ...] = ()
    """Module names that get LoRA adapters (e.g. ["q_proj", "v_proj"], or ["all-linear"]); empty uses
    peft's default for the architecture."""
    device: str = "cpu"
    """Hugging Face backend: `cpu`, `cuda`, `cuda:N`, `mps`, or `auto` (cuda when present, else cpu)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Hugging Face backend: the dtype the LM computes in (logits come back float32). With `autocast`,
    the weights stay float32; without it they are stored in this dtype (LoRA adapters stay float32)."""
    autocast: bool = True
    """Hugging Face backend, dtype bfloat16 or float16: keep float32 weights (the optimizer's master
    copy) and run the LM under torch.autocast in `dtype`. false stores the weights in `dtype` itself:
    half the memory, for a frozen LoRA base or for inference. float16 has no loss scaling: prefer bfloat16."""
    gradient_checkpointing: bool = False
    """Hugging Face backend: recompute each decoder layer's activations in the backward pass instead of
    keeping them (much less memory for long batches, about a third more compute)."""
    attn_implementation: str | None = None
    """Hugging Face backend: transformers' attention kernel (`eager`, `sdpa`, `flash_attention_2`, ...);
    unset takes transformers' default for the architecture."""
    chat_template: bool = False
    """Hugging Face backend: render prompts through the tokenizer's chat template: USER becomes the
    template's opening of a user turn, ASSISTANT its end and the opening of the assistant turn (each
    several tokenizer tokens), so an instruct model reads a prompt as it was trained to."""

    def __post_init__(self):
        require(self.d_model >= 4, "d_model", "an integer >= 4", self.d_model)
        require(self.n_layers >= 1, "n_layers", "an integer >= 1", self.n_layers)
        require(self.n_heads >= 1, "n_heads", "an integer >= 1", self.n_heads)
        require(self.mlp_ratio >= 1, "mlp_ratio", "an integer >= 1", self.mlp_ratio)
        d, _, h = self.shape()
        require(d % h == 0, "n_heads", f"a divisor of d_model={d}", h)
        self._check_shape_fields()
        self._check_hf()

    def _check_shape_fields(self) -> None:
        """A shape field set beside a named preset would be ignored while the stored config shows it."""
        if self.preset == "custom" or self.hf_path is not None:
            return
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            require(
                value == defaults[name],
                name,
                f'preset = "custom" to set it (preset {self.preset!r} fixes the shape), '
                f"or its default {defaults[name]}",
                value,
            )

    def _check_hf(self) -> None:
        """The Hugging Face fields: a real local directory, and no HF-only option without one."""
        if self.hf_path is None:
            require(
                self.lora_rank == 0,
                "lora_rank",
                "0 unless hf_path is set (LoRA is for Hugging Face models)",
                self.lora_rank,
            )
            require(
                self.device == "cpu",
                "device",
                "cpu unless hf_path is set (petridish's own models train on the CPU)",
                self.device,
            )
            require(self.dtype == "float32", "dtype", "float32 unless hf_path is set", self.dtype)
            require(
                not self.gradient_checkpointing,
                "gradient_checkpointing",
                "false unless hf_path is set",
                self.gradient_checkpointing,
            )
            require(
                self.attn_implementation is None,
                "attn_implementation",
                "unset unless hf_path is set",
                self.attn_implementation,
            )
            require(not self.chat_template, "chat_template", "false unless hf_path is set", self.chat_template)
            return
        require(self.kind == "transformer", "kind", "transformer when hf_path is set", self.kind)
        require(
            Path(self.hf_path, "config.json").is_file(),
            "hf_path",
            "a local Hugging Face model directory with a config.json",
            self.hf_path,
        )
        require(self.lora_rank >= 0, "lora_rank", "an integer >= 0", self.lora_rank)
        require(self.lora_alpha > 0, "lora_alpha", "a number > 0", self.lora_alpha)
        require(
            re.fullmatch(r"cpu|auto|mps|cuda(:\d+)?", self.device) is not None,
            "device",
            "cpu, cuda, cuda:N, mps or auto",
            self.device,
        )

    def shape(self) -> tuple[int, int, int]:
        """(d_model, n_layers, n_heads) after applying the preset."""
        if self.preset == "custom":
            return self.d_model, self.n_layers, self.n_heads
        return MODEL_PRESETS[self.preset]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 128
    """Sequences per step."""
    lr: float = 3e-3
    """Peak learning rate of AdamW, reached after warmup and decayed by a cosine to lr_min_ratio * lr."""
    lr_min_ratio: float = 0.1
    """Floor of the cosine decay, as a fraction of lr."""
    warmup_steps: int = 50
    """Linear warmup from 0 to lr."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (not applied to biases, LayerNorms or embeddings' positions)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    eval_every: int = 100
    """Log training and held-out loss every this many steps."""

    def __post_init__(self):
        require(self.steps >= 0, "steps", "an integer >= 0", self.steps)
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        require(0 < self.lr < 10, "lr", "a number in (0, 10)", self.lr)
        require(0 <= self.lr_min_ratio <= 1, "lr_min_ratio", "a number in [0, 1]", self.lr_min_ratio)
        require(self.warmup_steps >= 0, "warmup_steps", "an integer >= 0", self.warmup_steps)
        require(self.weight_decay >= 0, "weight_decay", "a number >= 0", self.weight_decay)
        require(self.grad_clip >= 0, "grad_clip", "a number >= 0", self.grad_clip)
        require(self.eval_every >= 1, "eval_every", "an integer >= 1", self.eval_every)


@dataclass(frozen=True)
class EvalConfig:
    n_prompts: int = 256
    """Fresh prompts per condition (triggered, clean) for behaviour rates."""
    temperature: float = 0.0
    """0 is greedy decoding; above 0 samples with this temperature."""

    def __post_init__(self):
        require(self.n_prompts >= 1, "n_prompts", "an integer >= 1", self.n_prompts)
        require(self.temperature >= 0, "temperature", "a number >= 0", self.temperature)


# --------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with precise errors
# --------------------------------------------------------------------------------------------


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = ""):
    """Build the frozen dataclass `cls` from `data`; unknown keys and bad values raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, expected("a table", data))
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(_join(prefix, key), f"unknown key; expected one of {', '.join(names)}")
    kwargs = {name: _coerce(hints[name], data[name], _join(prefix, name)) for name in names if name in data}
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise error.located(prefix=prefix) from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, expected("one of " + ", ".join(map(repr, args)), value))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as error:
                errors.append(error.detail)
        raise ConfigError(key, errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, expected("a list", value))
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, expected("true or false", value))
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, expected("an integer", value))
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, expected("a number", value))
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, expected("a string", value))
        return value
    return value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def to_dict(config) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Recipes: TOML + profile + overrides + sweep axes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe before it is split into runs."""

    file: str
    experiment: str
    name: str
    body: dict = field(repr=False)
    """The experiment's config table, with the profile and overrides applied."""
    sweep: dict = field(default_factory=dict, repr=False)
    """Sweep axes: {"grid": {...}, "zip": {...}, "random": {...}} of dotted keys to values."""


def load_recipe(path: str | Path, profile: str | None = None, overrides: tuple[str, ...] = ()) -> Recipe:
    """Read a TOML recipe, apply a profile table and `--set key=value` overrides."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise BadInput(f"{file}: recipe file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise BadInput(f"{file}: cannot read recipe ({type(error).__name__})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise BadInput(f"{file}: not valid TOML: {error}") from None
    except RecursionError:
        raise BadInput(
            f"{file}: not valid TOML: arrays or tables nested too deeply (expected a recipe a few levels deep)"
        ) from None
    profiles = data.pop("profile", {})
    if not isinstance(profiles, dict):
        raise ConfigError("profile", expected("a table of profiles", profiles), file)
    if profile is not None:
        if profile not in profiles:
            known = ", ".join(profiles) or "none"
            raise ConfigError("profile", f"no profile {profile!r} in the recipe (it has: {known})", file)
        if not isinstance(profiles[profile], dict):
            raise ConfigError(f"profile.{profile}", expected("a table", profiles[profile]), file)
        data = deep_merge(data, profiles[profile])
    for item in overrides:
        key, value = parse_override(item)
        data = set_dotted(data, key, value)
    experiment = data.pop("experiment", None)
    if not isinstance(experiment, str):
        raise ConfigError("experiment", expected("the name of an experiment family", experiment), file)
    name = data.pop("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        raise ConfigError("name", expected("a non-empty string", name), file)
    sweep = data.pop("sweep", {})
    if not isinstance(sweep, dict):
        raise ConfigError("sweep", expected("a table of sweep axes", sweep), file)
    return Recipe(file=file, experiment=experiment, name=name, body=data, sweep=sweep)


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=3` -> ("a.b", 3). The value is read as a TOML value, else kept as a string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise BadInput(f"--set {item!r}: expected dotted.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    except RecursionError:
        raise BadInput(
            f"--set {key}: value nested too deeply (expected a number, string, boolean or short list)"
        ) from None
    return key, value


def deep_merge(base: dict, extra: Mapping) -> dict:
    """A new dict: `extra` over `base`, merging nested tables."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def set_dotted(data: dict, key: str, value: Any) -> dict:
    """A new dict with `data[a][b] = value` for key `a.b`."""
    head, _, rest = key.partition(".")
    if not rest:
        return {**data, head: value}
    inner = data.get(head, {})
    if not isinstance(inner, dict):
        inner = {}
    return {**data, head: set_dotted(inner, rest, value)}


def flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = _join(prefix, key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out
