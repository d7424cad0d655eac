"""What can be named in a recipe, read from the registries themselves (`petridish list KIND`)."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from petridish.config import MODEL_PRESETS
from petridish.errors import BadInput
from petridish.experiments import EXPERIMENTS
from petridish.experiments.persistence import SAFETY_METHODS
from petridish.measures.detectors import DETECTORS
from petridish.policies import POLICIES
from petridish.scenarios import SCENARIOS


def _first_line(obj: Any) -> str:
    """The first sentence of an object's docstring, on one line."""
    paragraph = " ".join((inspect.getdoc(obj) or "").strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph[: end + 1] if end >= 0 else paragraph


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _presets() -> list[tuple[str, str]]:
    return [
        (name, f"d_model {d}, {layers} layer(s), {heads} head(s)") for name, (d, layers, heads) in MODEL_PRESETS.items()
    ]


def _experiments() -> list[tuple[str, str]]:
    out = []
    for name, experiment in EXPERIMENTS.items():
        module = inspect.getmodule(experiment.run)
        out.append((name, _capital(_first_line(module).split(":", 1)[-1].strip()) if module else ""))
    return out


KINDS: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "scenarios": lambda: [(name, _first_line(cls)) for name, cls in SCENARIOS.items()],
    "policies": lambda: [(name, _first_line(fn)) for name, fn in POLICIES.items()],
    "methods": lambda: [(name, _first_line(fn)) for name, fn in SAFETY_METHODS.items()],
    "detectors": lambda: [
        (name, _capital(_first_line(inspect.getmodule(fn)).split(":", 1)[-1].strip())) for name, fn in DETECTORS.items()
    ],
    "experiments": _experiments,
    "presets": _presets,
}
"""Each kind of extension -> (name, one-line doc) of every registered one."""


def catalog(kind: str) -> list[tuple[str, str]]:
    if kind not in KINDS:
        raise BadInput(f"list {kind!r}: expected one of {', '.join(KINDS)}")
    return KINDS[kind]()
