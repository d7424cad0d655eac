"""Recipes -> runs: expand sweep axes (grid, zip, seeded random) into RunSpecs with stable ids.

A run's id is a hash of its experiment, CONFIG_VERSION and the fields of its resolved config that
differ from the family's defaults (not its name): running the same recipe again finds the finished runs
instead of training again, and a field added at its default leaves every stored id alone.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from petridish.config import (
    CONFIG_VERSION,
    ConfigError,
    ModelConfig,
    Recipe,
    expected,
    flatten,
    from_dict,
    set_dotted,
    to_dict,
)
from petridish.experiments import EXPERIMENTS


@dataclass(frozen=True)
class RunSpec:
    id: str
    experiment: str
    name: str
    config: Any = field(repr=False)
    point: dict = field(default_factory=dict)
    """The sweep values that made this run, {dotted key: value}."""
    requires: tuple["RunSpec", ...] = ()
    """The runs this run reads (its family's `requires`), run first or found done; see executors.Driver."""


def run_id(experiment: str, config) -> str:
    """12 hex digits of the hash of the experiment, CONFIG_VERSION, the family's `version` (when not 0) and
    the config's non-default fields."""
    changed = _changed(to_dict(config), to_dict(type(config)()))
    identity = {"experiment": experiment, "version": CONFIG_VERSION, "config": changed}
    family = EXPERIMENTS.get(experiment)
    if family is not None and family.version:  # version 0 leaves the ids of before family versions alone
        identity["family_version"] = family.version
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _changed(values: dict, defaults: dict) -> dict:
    """The entries of `values` that differ from `defaults`, recursively (a table with none is left out)."""
    out = {}
    for key, value in values.items():
        default = defaults.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(default, dict):
            inner = _changed(value, default)
            if inner:
                out[key] = inner
        elif value != default:
            out[key] = value
    return out


_MISSING = object()


MAX_SEED = 2**63 - 1
"""Seeds are 63-bit non-negative integers (rng.derive_seed); a negative one failed inside the run."""


def expand(recipe: Recipe) -> list[RunSpec]:
    """One RunSpec per sweep point (one run when the recipe has no sweep), duplicates removed."""
    return list(iter_specs(recipe))


def iter_specs(recipe: Recipe) -> Iterator[RunSpec]:
    """The RunSpecs of a recipe, one at a time (a large sweep is never held twice), duplicates removed."""
    if recipe.experiment not in EXPERIMENTS:
        raise ConfigError("experiment", expected("one of " + ", ".join(EXPERIMENTS), recipe.experiment), recipe.file)
    experiment = EXPERIMENTS[recipe.experiment]
    seen: set[str] = set()
    set_keys: set[str] = set()
    read_keys: set[str] = set()
    for point in sweep_points(recipe.sweep, recipe.file):
        body = recipe.body
        for key, value in point.items():
            body = set_dotted(body, key, value)
        try:
            config = from_dict(experiment.config_cls, body)
            check_seeds(config)
        except ConfigError as error:
            raise error.located(file=recipe.file) from None
        set_keys.update(flatten(body))
        read_keys.update(resolved_keys(config))
        suffix = ",".join(f"{k}={v}" for k, v in point.items())
        name = f"{recipe.name}[{suffix}]" if suffix else recipe.name
        spec = RunSpec(
            run_id(recipe.experiment, config),
            recipe.experiment,
            name,
            config,
            point,
            required_specs(recipe.experiment, config, name, recipe.file),
        )
        for required in (*requirements_of(spec), spec):  # required runs first, each once
            if required.config is not None and required.id not in seen:
                seen.add(required.id)
                yield required
    unread = sorted(set_keys - read_keys)
    if unread:
        raise ConfigError(
            unread[0],
            "set, but no run of the recipe reads it (an option of a setting no run chooses: a method's table "
            "for another method, say); remove it or choose that setting",
            recipe.file,
        )


def resolved_keys(config) -> set[str]:
    """Every dotted key of `config`'s resolved form that holds a value (a field left None is not read in
    its setting; see `config.read_only_if`), with every table above it."""
    keys: set[str] = set()
    for key, value in flatten(to_dict(config)).items():
        if value is not None:
            parts = key.split(".")
            keys.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return keys


def required_specs(experiment: str, config, name: str, file: str = "") -> tuple[RunSpec, ...]:
    """The RunSpecs of the runs a run of `experiment` with `config` requires (its family's `requires`),
    each with its own requirements; named `{name}.requires.{experiment}`. A requirement given by run id
    (a string) instead of a config is a run that must already be done in the store: its spec has no config."""
    requires = EXPERIMENTS[experiment].requires
    if requires is None:
        return ()
    specs = []
    for other, other_config in requires(config):
        if isinstance(other_config, str):
            specs.append(RunSpec(other_config, other, f"{other} run {other_config}", None))
            continue
        if other not in EXPERIMENTS or not isinstance(other_config, EXPERIMENTS[other].config_cls):
            raise ConfigError(
                "experiment",
                f"{experiment} requires a run of {other!r}, which is not a registered family with that config",
                file,
            )
        other_name = f"{name}.requires.{other}"
        specs.append(
            RunSpec(
                run_id(other, other_config),
                other,
                other_name,
                other_config,
                {},
                required_specs(other, other_config, other_name, file),
            )
        )
    return tuple(specs)


def requirements_of(spec: RunSpec) -> list[RunSpec]:
    """Every run `spec` requires, at any depth, each before the runs that require it."""
    out: list[RunSpec] = []
    for required in spec.requires:
        out += [*requirements_of(required), required]
    return out


def check_seeds(config, prefix: str = "") -> None:
    """Every `seed` field of a config (at any depth) is an integer in [0, 2**63 - 1]."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_seeds(value, key + ".")
        elif f.name == "seed" and isinstance(value, int) and not 0 <= value <= MAX_SEED:
            raise ConfigError(key, expected(f"an integer in [0, {MAX_SEED}]", value))


def count_runs(recipe: Recipe) -> int:
    """How many sweep points the recipe has (before duplicates are removed), without expanding it."""
    sweep, file = recipe.sweep, recipe.file
    _check_kinds(sweep, file)
    grid = math.prod(len(values) for values in _axes(sweep.get("grid", {}), "grid", file).values())
    zipped = _zip_length(_axes(sweep.get("zip", {}), "zip", file), file)
    return grid * max(zipped, 1) * _random_count(sweep.get("random", {}), file)


def sweep_points(sweep: dict, file: str) -> Iterator[dict]:
    """The cartesian product of the grid, the zipped axes and the random draws, one point at a time."""
    _check_kinds(sweep, file)
    grid_axes = _axes(sweep.get("grid", {}), "grid", file)
    zipped, drawn = _zip(sweep.get("zip", {}), file), _random(sweep.get("random", {}), file)
    for combo in itertools.product(*grid_axes.values()):  # lazy: a million-point grid is never a list
        grid_point = dict(zip(grid_axes, combo))
        for zip_point in zipped:
            for random_point in drawn:
                yield {**grid_point, **zip_point, **random_point}


def _check_kinds(sweep: dict, file: str) -> None:
    unknown = set(sweep) - {"grid", "zip", "random"}
    if unknown:
        raise ConfigError(f"sweep.{sorted(unknown)[0]}", "unknown sweep kind; expected grid, zip or random", file)


def _axes(table: Any, kind: str, file: str) -> dict[str, list]:
    if not isinstance(table, dict):
        raise ConfigError(f"sweep.{kind}", expected("a table of dotted keys to lists", table), file)
    axes = flatten(table)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{kind}.{key}", expected("a non-empty list of values", values), file)
    return axes


def _zip_length(axes: dict[str, list], file: str) -> int:
    lengths = {len(v) for v in axes.values()}
    if len(lengths) > 1:
        raise ConfigError("sweep.zip", f"expected lists of one length, got lengths {sorted(lengths)}", file)
    return lengths.pop() if lengths else 0


def _zip(table, file) -> list[dict]:
    axes = _axes(table, "zip", file)
    _zip_length(axes, file)
    return [dict(zip(axes, combo)) for combo in zip(*axes.values())] or [{}]


def _random_count(table, file) -> int:
    """n of `[sweep.random]` (1 without one), checked."""
    if not table:
        return 1
    if not isinstance(table, dict):
        raise ConfigError("sweep.random", expected("a table", table), file)
    n, seed = table.get("n"), table.get("seed", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("sweep.random.n", expected("an integer >= 1", n), file)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("sweep.random.seed", expected("an integer", seed), file)
    return n


def _random(table, file) -> list[dict]:
    """{n, seed, key = {low, high, log?, integer?} | {choices = [...]}}: n seeded draws."""
    n = _random_count(table, file)
    if not table:
        return [{}]
    table = dict(table)
    del table["n"]
    seed = table.pop("seed", 0)
    draws = {key: _distribution(spec, f"sweep.random.{key}", file) for key, spec in table.items()}
    rng = random.Random(seed)
    return [{key: draw(rng) for key, draw in draws.items()} for _ in range(n)]


def _distribution(spec, key: str, file: str):
    if isinstance(spec, dict) and "choices" in spec and isinstance(spec["choices"], list) and spec["choices"]:
        return lambda rng: rng.choice(spec["choices"])
    ok = isinstance(spec, dict) and all(
        isinstance(spec.get(b), (int, float)) and not isinstance(spec.get(b), bool) for b in ("low", "high")
    )
    if not ok or spec["low"] > spec["high"] or (spec.get("log") and spec["low"] <= 0):
        raise ConfigError(
            key,
            expected("{low, high[, log, integer]} with low <= high (low > 0 for log) or {choices = [...]}", spec),
            file,
        )
    low, high, log, integer = spec["low"], spec["high"], bool(spec.get("log")), bool(spec.get("integer"))
    if integer:
        return lambda rng: rng.randint(int(low), int(high))
    if log:
        return lambda rng: math.exp(rng.uniform(math.log(low), math.log(high)))
    return lambda rng: rng.uniform(low, high)


# --------------------------------------------------------------------------------------------
# Bounds: how many runs, and how much memory one run needs, checked before anything trains
# --------------------------------------------------------------------------------------------

SWEEP_LIMIT = 100_000
"""Runs a sweep may have without `--yes-really`: above it, a typo in an axis is likelier than intent."""
SPEC_BYTES = 8 * 1024
"""Memory one expanded run takes in the driver (measured: ~8 KiB for a persistence config)."""
ITEM_BYTES = 2 * 1024
"""Memory per prompt, example or pair a run holds (measured: ~1.6 KiB per 12-digit prompt, before encoding)."""
BYTES_PER_PARAMETER = 16
"""fp32 weights, gradients and AdamW's two moments."""
SHAPE_FIELDS = frozenset({"n_digits", "n_layers", "n_heads"})
"""`n_*` fields that are shapes, not counts of things held in memory."""


@dataclass(frozen=True)
class MemoryEstimate:
    total: float
    culprit: str
    """The setting behind the largest part, as `key=value`."""
    parts: dict[str, float]


def memory_limit() -> int:
    """Bytes of memory this process may use: physical memory, or the cgroup's limit when lower."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            limit = min(limit, int(text))
    except OSError:
        pass
    return limit


def check_sweep_size(n_runs: int, file: str, yes_really: bool, limit: int | None = None) -> None:
    """ConfigError when the sweep is too large to expand, or larger than SWEEP_LIMIT without consent."""
    limit = memory_limit() if limit is None else limit
    if n_runs * SPEC_BYTES > limit:
        raise ConfigError(
            "sweep",
            f"{n_runs:,} runs would need about {_size(n_runs * SPEC_BYTES)} of memory just to list, "
            f"more than this machine's {_size(limit)}; expected a smaller sweep (split it into recipes)",
            file,
        )
    if n_runs > SWEEP_LIMIT and not yes_really:
        raise ConfigError(
            "sweep",
            f"{n_runs:,} runs is more than {SWEEP_LIMIT:,}; expected fewer, or pass --yes-really to run them all",
            file,
        )


def check_memory(spec: RunSpec, file: str, limit: int | None = None) -> None:
    """ConfigError naming the setting at fault when one run of `spec` would not fit in memory."""
    limit = memory_limit() if limit is None else limit
    estimate = estimate_memory(spec.config)
    if estimate.total > limit:
        parts = ", ".join(f"{name} {_size(value)}" for name, value in estimate.parts.items() if value)
        raise ConfigError(
            estimate.culprit,
            f"a run would need about {_size(estimate.total)} of memory ({parts}), more than this "
            f"machine's {_size(limit)}; expected a smaller value (or --yes-really to try anyway)",
            file,
        )


def estimate_memory(config) -> MemoryEstimate:
    """A lower bound on a run's memory: its largest model in training, its batches' activations, and
    the prompts it holds. Deliberately low, so that only runs that cannot fit are refused."""
    models, batches, counts = _walk(config)
    vocab, n_ctx = _scenario_dims(getattr(config, "scenario", None))
    model_bytes, model_key, activations = 0.0, "model", 0.0
    batch_key, batch = max(batches, key=lambda kv: kv[1], default=("batch_size", 1))
    for key, model in models:
        params, per_token = _model_size(model, vocab, n_ctx)
        if params * BYTES_PER_PARAMETER > model_bytes:
            d, layers, heads = model.shape()
            model_bytes, model_key = (
                params * BYTES_PER_PARAMETER,
                f"{key}.d_model={d}" if model.preset == "custom" else f"{key}.preset={model.preset}",
            )
            if model.preset == "custom" and layers > d:
                model_key = f"{key}.n_layers={layers}"
        activations = max(activations, 2 * 4 * batch * n_ctx * per_token)
    count_key, count = max(counts, key=lambda kv: kv[1], default=("n_prompts", 0))
    items = sum(v for _, v in counts) * ITEM_BYTES
    parts = {"model": model_bytes, "activations": activations, "prompts": items}
    # Activations grow with the model and the batch: blame the batch only when one sequence's are small beside the model.
    sized_by = model_key if model_bytes >= activations / max(batch, 1) else f"{batch_key}={batch}"
    culprit = sized_by if model_bytes + activations >= items else f"{count_key}={count}"
    return MemoryEstimate(sum(parts.values()), culprit, parts)


def _walk(config, prefix: str = "") -> tuple[list, list, list]:
    """(models, batch sizes, counts) anywhere in a config: [(key, ModelConfig)], [(key, int)], [(key, int)]."""
    models, batches, counts = [], [], []
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), f"{prefix}{f.name}"
        if isinstance(value, ModelConfig):
            if value.hf_path is None:
                models.append((key, value))
        elif dataclasses.is_dataclass(value):
            inner = _walk(value, key + ".")
            models += inner[0]
            batches += inner[1]
            counts += inner[2]
        elif isinstance(value, int) and not isinstance(value, bool):
            if f.name == "batch_size":
                batches.append((key, value))
            elif f.name.startswith("n_") and f.name not in SHAPE_FIELDS:
                counts.append((key, value))
    return models, batches, counts


@functools.lru_cache(maxsize=64)
def _scenario_dims(scenario) -> tuple[int, int]:
    """(vocabulary size, context length) of a scenario config; generous defaults when it has none."""
    try:
        from petridish.scenarios import make_scenario

        built = make_scenario(scenario)
        return len(built.vocab), built.max_prompt_len + built.max_response_len
    except Exception:  # not a scenario config (a family with its own world): the bound stays a bound
        return 32, 24


def _model_size(model: ModelConfig, vocab: int, n_ctx: int) -> tuple[int, int]:
    """(parameters, activation floats per token) of a model config."""
    d, layers, heads = model.shape()
    hidden = d * model.mlp_ratio
    if model.kind == "mlp":
        return n_ctx * vocab * hidden + layers * hidden * hidden + hidden * n_ctx * vocab, layers * hidden + vocab
    params = 2 * vocab * d + n_ctx * d + layers * (4 * d * d + 2 * d * hidden + 10 * d + hidden)
    return params, layers * (8 * d + 2 * hidden + heads * n_ctx) + 2 * vocab


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""
