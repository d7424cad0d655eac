"""Malformed recipes, generated with hypothesis: each must end in exit code 2 and a one-line message
on stderr, never a traceback, and must never reach training.

Every generated case is malformed by construction: a valid recipe of a registered experiment with at
least one defect (an unknown key, a value of the wrong type or out of range, a table where a value
belongs, a broken sweep axis, a missing or unknown experiment, broken TOML, bad bytes, a bad `--set`,
`--profile` or executor option). The schema is read from the experiments' config dataclasses, so
new fields are fuzzed without touching this file. `bench/reliability.py` runs more examples.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import tempfile
import types
import typing
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petridish.cli import main
from petridish.config import to_dict
from petridish.experiments import EXPERIMENTS

RESERVED = {"experiment", "name", "profile", "sweep"}
# Known ranges of persistence fields (validated in __post_init__): values just outside them.
OUT_OF_RANGE: dict[str, st.SearchStrategy] = {
    "scenario.n_digits": st.one_of(st.integers(max_value=0), st.integers(min_value=13)),
    "insert.n_prompts": st.integers(max_value=0),
    "insert.triggered_fraction": st.one_of(
        st.floats(max_value=-1e-9), st.floats(min_value=1.000001), st.just(math.nan)
    ),
    "insert.train.steps": st.integers(max_value=-1),
    "insert.train.batch_size": st.integers(max_value=0),
    "insert.train.lr": st.one_of(st.floats(max_value=0.0), st.floats(min_value=10.0), st.just(math.nan)),
    "insert.train.lr_min_ratio": st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.000001)),
    "insert.train.warmup_steps": st.integers(max_value=-1),
    "insert.train.weight_decay": st.one_of(st.floats(max_value=-1e-9), st.just(math.nan)),
    "insert.train.grad_clip": st.floats(max_value=-1e-9),
    "insert.train.eval_every": st.integers(max_value=0),
    "eval.n_prompts": st.integers(max_value=0),
    "eval.temperature": st.one_of(st.floats(max_value=-1e-9), st.just(math.nan)),
    "model.d_model": st.integers(max_value=3),
    "model.n_layers": st.integers(max_value=0),
    "model.n_heads": st.integers(max_value=0),
    "model.mlp_ratio": st.integers(max_value=0),
}

# --------------------------------------------------------------------------------------------
# The schema, from the config dataclasses
# --------------------------------------------------------------------------------------------


def leaf_fields(cls: type, prefix: str = "") -> dict[str, Any]:
    """{dotted key: type} of every field; tables (nested dataclasses) included as their class."""
    hints, out = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        out[key] = tp
        if dataclasses.is_dataclass(tp):
            out.update(leaf_fields(tp, key + "."))
    return out


def _scalars() -> st.SearchStrategy:
    return st.one_of(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1), st.floats(), st.booleans(), st.dates())


@functools.lru_cache(maxsize=None)  # strategies are immutable; building them is most of the cost
def wrong_value(tp: Any) -> st.SearchStrategy | None:
    """Values that can never pass as `tp`; None where any value might (an untyped field)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    table = st.dictionaries(st.text(min_size=1, max_size=5), st.integers(), min_size=1, max_size=2)
    if dataclasses.is_dataclass(tp):
        return st.one_of(
            st.text(max_size=8), st.integers(), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2)
        )
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return wrong_value(inner[0]) if len(inner) == 1 else None
    if origin is Literal:
        return st.one_of(
            st.text(max_size=10).filter(lambda s: s not in args),
            st.integers(),
            st.floats(),
            st.lists(st.sampled_from(args), max_size=2),
            table,
        )
    if origin is tuple:
        inner = wrong_value(args[0]) if args else None
        lists = [st.lists(inner, min_size=1, max_size=3)] if inner is not None else []
        return st.one_of(st.text(max_size=8), st.integers(), st.floats(), st.booleans(), table, *lists)
    if tp is bool:
        return st.one_of(st.integers(), st.floats(), st.text(max_size=8), st.lists(st.booleans(), max_size=2), table)
    if tp is int:
        non_integral = st.floats().filter(lambda x: not (math.isfinite(x) and x == int(x))) | st.sampled_from(
            [0.5, 2.0, -3.0]
        )
        return st.one_of(
            st.text(max_size=8), st.booleans(), non_integral, st.lists(st.integers(), max_size=2), table, st.dates()
        )
    if tp is float:
        return st.one_of(st.text(max_size=8), st.booleans(), st.lists(st.floats(), max_size=2), table, st.dates())
    if tp is str:
        return st.one_of(st.integers(), st.floats(), st.booleans(), st.lists(st.text(max_size=3), max_size=2), table)
    return None


# --------------------------------------------------------------------------------------------
# Defects: each takes (draw, recipe dict, CLI args) and returns them with one defect added
# --------------------------------------------------------------------------------------------


def set_path(data: dict, key: str, value: Any) -> dict:
    head, _, rest = key.partition(".")
    if not rest:
        return {**data, head: value}
    inner = data.get(head)
    return {**data, head: set_path(inner if isinstance(inner, dict) else {}, rest, value)}


@functools.lru_cache(maxsize=None)
def schema_of(family: str) -> dict[str, Any]:
    return leaf_fields(EXPERIMENTS[family].config_cls)


def unknown_key(draw, recipe, args, family):
    schema = schema_of(family)
    tables = [""] + [k + "." for k, tp in schema.items() if dataclasses.is_dataclass(tp)]
    prefix = draw(st.sampled_from(tables))
    known = {k[len(prefix) :].split(".")[0] for k in schema if k.startswith(prefix)} | (
        RESERVED if not prefix else set()
    )
    awkward = st.sampled_from(["a\nb", "x\r", "tab\t", "\u2028", "dotted.key", "", " ", "ü", "[x]", "\x00"])
    key = draw((awkward | st.text(max_size=10)).filter(lambda s: s not in known))
    value = draw(_scalars())
    if not prefix:
        return {**recipe, key: value}, args
    table = prefix[:-1]
    return set_path(recipe, table, {**_table(recipe, table), key: value}), args


def _table(recipe: dict, key: str) -> dict:
    node: Any = recipe
    for part in key.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def wrong_type(draw, recipe, args, family):
    schema = wrong_values_of(family)
    key = draw(st.sampled_from(sorted(schema)))
    return set_path(recipe, key, draw(schema[key])), args


@functools.lru_cache(maxsize=None)
def wrong_values_of(family: str) -> dict[str, st.SearchStrategy]:
    return {k: s for k, tp in schema_of(family).items() if (s := wrong_value(tp)) is not None}


def out_of_range(draw, recipe, args, family):
    if family != "persistence":
        return wrong_type(draw, recipe, args, family)
    key = draw(st.sampled_from(sorted(OUT_OF_RANGE)))
    return set_path(recipe, key, draw(OUT_OF_RANGE[key])), args


def bad_top_level(draw, recipe, args, family):
    choice = draw(st.sampled_from(["no experiment", "experiment", "name", "profile", "missing profile", "sweep"]))
    if choice == "no experiment":
        return {k: v for k, v in recipe.items() if k != "experiment"}, args
    if choice == "experiment":
        return {
            **recipe,
            "experiment": draw(
                st.one_of(
                    st.text(max_size=12).filter(lambda s: s not in EXPERIMENTS),
                    st.integers(),
                    st.lists(st.integers(), max_size=2),
                )
            ),
        }, args
    if choice == "name":
        return {**recipe, "name": draw(st.one_of(st.just(""), st.integers(), st.booleans(), st.floats()))}, args
    if choice == "profile":
        return {
            **recipe,
            "profile": draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2))),
        }, args
    if choice == "missing profile":
        known = recipe.get("profile") if isinstance(recipe.get("profile"), dict) else {}
        return recipe, [
            *args,
            "--profile",
            draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in known and not s.startswith("-"))),
        ]
    return {
        **recipe,
        "sweep": draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2))),
    }, args


def bad_profile(draw, recipe, args, family):
    """A profile table carrying a defect, selected with --profile."""
    inner, _ = draw(st.sampled_from([wrong_type, out_of_range]))(draw, {}, [], family)
    existing = recipe.get("profile")
    profiles = {**(existing if isinstance(existing, dict) else {}), "broken": inner}
    return {**recipe, "profile": profiles}, [*args, "--profile", "broken"]


def bad_sweep(draw, recipe, args, family):
    schema = schema_of(family)
    leaves = sorted(k for k, tp in schema.items() if not dataclasses.is_dataclass(tp) and wrong_value(tp) is not None)
    key = draw(st.sampled_from(leaves))
    kind = draw(
        st.sampled_from(
            [
                "not a list",
                "empty",
                "bad value",
                "unknown key",
                "zip lengths",
                "random n",
                "random seed",
                "random spec",
                "kind",
            ]
        )
    )
    sweep = dict(recipe["sweep"]) if isinstance(recipe.get("sweep"), dict) else {}
    if kind == "not a list":
        sweep["grid"] = {key: draw(_scalars())}
    elif kind == "empty":
        sweep[draw(st.sampled_from(["grid", "zip"]))] = {key: []}
    elif kind == "bad value":
        sweep["grid"] = {key: [draw(wrong_value(schema[key]))]}
    elif kind == "unknown key":
        sweep["grid"] = {key + "." + draw(st.text(min_size=1, max_size=6)): [1]}
    elif kind == "zip lengths":
        lengths = draw(st.lists(st.integers(1, 3), min_size=2, max_size=2, unique=True))
        sweep["zip"] = {
            key: list(range(lengths[0])),
            key + "_twin": list(range(lengths[1])),
        }  # lengths are checked first
    elif kind == "random n":
        sweep["random"] = {
            "n": draw(st.one_of(st.integers(max_value=0), st.text(max_size=3), st.floats(), st.booleans()))
        }
    elif kind == "random seed":
        sweep["random"] = {"n": 2, "seed": draw(st.one_of(st.text(max_size=3), st.floats(), st.booleans()))}
    elif kind == "random spec":
        spec = draw(
            st.sampled_from(
                [
                    {"low": 2.0, "high": 1.0},
                    {"low": -1.0, "high": 1.0, "log": True},
                    {"low": 1.0},
                    {"choices": []},
                    {"high": "x", "low": 0},
                ]
            )
        )
        sweep["random"] = {"n": 2, key: draw(st.one_of(st.just(spec), _scalars()))}
    else:
        sweep[draw(st.text(min_size=1, max_size=6).filter(lambda s: s not in ("grid", "zip", "random")))] = {key: [1]}
    return {**recipe, "sweep": sweep}, args


def bad_option(draw, recipe, args, family):
    option = draw(st.sampled_from(["set syntax", "set value", "jobs", "threads", "executor"]))
    if option == "set syntax":
        item = draw(st.sampled_from(["novalue", "=3", "a..b=1", ".a=1", "a.=2", " =1"]))
        return recipe, [*args, "--set", item]
    if option == "set value":
        schema = schema_of(family)
        scalar_keys = sorted(
            k for k, tp in schema.items() if not dataclasses.is_dataclass(tp) and wrong_value(tp) is not None
        )
        key = draw(st.sampled_from(scalar_keys))
        value = draw(wrong_value(schema[key]).filter(lambda v: not isinstance(v, dict)))
        literal = tomli_w.dumps({"v": value}).partition("=")[2].strip()  # the value as TOML, as --set reads it
        return recipe, [*args, "--set", f"{key}={literal}"]
    if option == "executor":
        return recipe, [
            *args,
            "--executor",
            draw(st.text(min_size=1, max_size=6).filter(lambda s: s not in ("local", "ray") and not s.startswith("-"))),
        ]
    return recipe, [
        *args,
        f"--{option}",
        str(draw(st.one_of(st.integers(max_value=0), st.sampled_from(["x", "1.5", ""])))),
    ]


DEFECTS = (unknown_key, wrong_type, out_of_range, bad_top_level, bad_profile, bad_sweep, bad_option)
BROKEN_TOML = ("= 1", "[", "[model", 'x = "unterminated', "x = [1, 2", "x = {a = 1", "x == 2", "[[", "x = 1 2")


@st.composite
def malformed(draw) -> tuple[bytes, list[str]]:
    """(recipe file bytes, extra CLI arguments), with at least one defect."""
    kind = draw(st.sampled_from(["defects", "defects", "defects", "defects", "broken toml", "bytes", "text"]))
    if kind == "bytes":
        return b"\xff\xfe" + draw(st.binary(max_size=40)), []
    if kind == "text":
        return draw(st.text(max_size=60).filter(lambda t: "experiment" not in t)).encode(), []
    experiment = draw(st.sampled_from(sorted(EXPERIMENTS)))
    recipe: dict = {"experiment": experiment, "name": "fuzz", **to_dict(EXPERIMENTS[experiment].config_cls())}
    recipe = _drop_none(recipe)
    args: list[str] = []
    for defect in draw(st.lists(st.sampled_from(DEFECTS), min_size=1, max_size=3)):
        recipe, args = defect(draw, recipe, args, experiment)
    text = tomli_w.dumps(recipe)
    if kind == "broken toml":
        lines = text.splitlines()
        at = draw(st.integers(0, len(lines)))
        text = "\n".join(lines[:at] + [draw(st.sampled_from(BROKEN_TOML))] + lines[at:])
    return text.encode(), args


def _drop_none(data):
    """TOML has no null: a field whose default is None is left out (and so keeps its default)."""
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    return data


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------


def check_case(content: bytes, args: list[str], directory: str) -> None:
    path = Path(directory) / "recipe.toml"
    path.write_bytes(content)
    out, err = io.StringIO(), io.StringIO()
    accepted = AssertionError(f"a malformed recipe was accepted and would train: args={args}\n{content[:400]!r}")
    with mock.patch("petridish.executors.execute", side_effect=accepted), redirect_stdout(out), redirect_stderr(err):
        code = main(["run", str(path), "--store", os.path.join(directory, "store"), *args])
    message = err.getvalue()
    assert code == 2, (code, message, args, content[:400])
    assert message.startswith("error: ") and message.count("\n") == 1, (message, args, content[:400])
    assert "Traceback" not in message + out.getvalue()
    assert str(path) in message or "--" in message, message  # names the file, or the option at fault


def check_many(examples: int, derandomize: bool = False) -> int:
    """Run `examples` malformed recipes through the CLI; returns how many were checked."""
    checked = []
    with tempfile.TemporaryDirectory() as directory:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=derandomize,
            suppress_health_check=list(HealthCheck),
        )
        @given(malformed())
        def check(case):
            check_case(*case, directory)
            checked.append(1)

        check()
    return len(checked)


def test_a_thousand_malformed_recipes_end_in_exit_2_and_one_line():
    assert check_many(1000, derandomize=True) >= 1000


def test_the_base_recipes_are_valid(tmp_path):
    """The fuzzer's starting points are valid, so the defects it adds are what the CLI refuses."""
    from petridish.config import load_recipe
    from petridish.sweep import expand

    for experiment, spec in EXPERIMENTS.items():
        path = tmp_path / f"{experiment}.toml"
        path.write_text(
            tomli_w.dumps(_drop_none({"experiment": experiment, "name": "base", **to_dict(spec.config_cls())}))
        )
        specs = expand(load_recipe(path))  # and the runs it requires (a base organism), scheduled first
        assert [s.experiment for s in specs].count(experiment) == 1 and specs[-1].experiment == experiment
