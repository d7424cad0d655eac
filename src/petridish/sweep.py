"""Recipes -> runs: expand sweep axes (grid, zip, seeded random) into RunSpecs with stable ids.

A run's id is a hash of its experiment and resolved config (not its name), so running the same
recipe again finds the finished runs instead of training again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

from petridish.config import ConfigError, Recipe, expected, flatten, from_dict, set_dotted, to_dict
from petridish.experiments import EXPERIMENTS


@dataclass(frozen=True)
class RunSpec:
    id: str
    experiment: str
    name: str
    config: Any = field(repr=False)
    point: dict = field(default_factory=dict)
    """The sweep values that made this run, {dotted key: value}."""


def run_id(experiment: str, config) -> str:
    canonical = json.dumps({"experiment": experiment, "config": to_dict(config)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def expand(recipe: Recipe) -> list[RunSpec]:
    """One RunSpec per sweep point (one run when the recipe has no sweep), duplicates removed."""
    if recipe.experiment not in EXPERIMENTS:
        raise ConfigError("experiment", expected("one of " + ", ".join(EXPERIMENTS), recipe.experiment), recipe.file)
    experiment = EXPERIMENTS[recipe.experiment]
    specs: dict[str, RunSpec] = {}
    for point in sweep_points(recipe.sweep, recipe.file):
        body = recipe.body
        for key, value in point.items():
            body = set_dotted(body, key, value)
        try:
            config = from_dict(experiment.config_cls, body)
        except ConfigError as error:
            raise error.located(file=recipe.file) from None
        suffix = ",".join(f"{k}={v}" for k, v in point.items())
        name = f"{recipe.name}[{suffix}]" if suffix else recipe.name
        spec = RunSpec(run_id(recipe.experiment, config), recipe.experiment, name, config, point)
        specs.setdefault(spec.id, spec)
    return list(specs.values())


def sweep_points(sweep: dict, file: str) -> list[dict]:
    """The cartesian product of the grid, the zipped axes and the random draws."""
    unknown = set(sweep) - {"grid", "zip", "random"}
    if unknown:
        raise ConfigError(f"sweep.{sorted(unknown)[0]}", "unknown sweep kind; expected grid, zip or random", file)
    parts = [_grid(sweep.get("grid", {}), file), _zip(sweep.get("zip", {}), file), _random(sweep.get("random", {}), file)]
    return [dict(itertools.chain.from_iterable(p.items() for p in combo)) for combo in itertools.product(*parts)]


def _axes(table: Any, kind: str, file: str) -> dict[str, list]:
    if not isinstance(table, dict):
        raise ConfigError(f"sweep.{kind}", expected("a table of dotted keys to lists", table), file)
    axes = flatten(table)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{kind}.{key}", expected("a non-empty list of values", values), file)
    return axes


def _grid(table, file) -> list[dict]:
    axes = _axes(table, "grid", file)
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def _zip(table, file) -> list[dict]:
    axes = _axes(table, "zip", file)
    lengths = {len(v) for v in axes.values()}
    if len(lengths) > 1:
        raise ConfigError("sweep.zip", f"expected lists of one length, got lengths {sorted(lengths)}", file)
    return [dict(zip(axes, combo)) for combo in zip(*axes.values())] or [{}]


def _random(table, file) -> list[dict]:
    """{n, seed, key = {low, high, log?, integer?} | {choices = [...]}}: n seeded draws."""
    if not table:
        return [{}]
    if not isinstance(table, dict):
        raise ConfigError("sweep.random", expected("a table", table), file)
    table = dict(table)
    n, seed = table.pop("n", None), table.pop("seed", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("sweep.random.n", expected("an integer >= 1", n), file)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("sweep.random.seed", expected("an integer", seed), file)
    draws = {key: _distribution(spec, f"sweep.random.{key}", file) for key, spec in table.items()}
    rng = random.Random(seed)
    return [{key: draw(rng) for key, draw in draws.items()} for _ in range(n)]


def _distribution(spec, key: str, file: str):
    if isinstance(spec, dict) and "choices" in spec and isinstance(spec["choices"], list) and spec["choices"]:
        return lambda rng: rng.choice(spec["choices"])
    ok = isinstance(spec, dict) and all(isinstance(spec.get(b), (int, float)) and not isinstance(spec.get(b), bool) for b in ("low", "high"))
    if not ok or spec["low"] > spec["high"] or (spec.get("log") and spec["low"] <= 0):
        raise ConfigError(key, expected("{low, high[, log, integer]} with low <= high (low > 0 for log) or {choices = [...]}", spec), file)
    low, high, log, integer = spec["low"], spec["high"], bool(spec.get("log")), bool(spec.get("integer"))
    if integer:
        return lambda rng: rng.randint(int(low), int(high))
    if log:
        return lambda rng: math.exp(rng.uniform(math.log(low), math.log(high)))
    return lambda rng: rng.uniform(low, high)
