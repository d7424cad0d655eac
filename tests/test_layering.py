"""Data flows one way: a module imports only petridish modules of its own layer or earlier ones
(the order is CONTRIBUTING.md's)."""

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "petridish"
LAYERS = (
    "errors",
    "extras",
    "rng",
    "provenance",
    "config",
    "scenarios",
    "policies",
    "data",
    "models",
    "train",
    "measures",
    "experiments",
    "catalog",
    "sweep",
    "aggregate",
    "grid",
    "store",
    "executors",
    "report",
    "export",
    "cli",
    "demo",
)
"""Earliest first. `cli` and `demo` (which drives the CLI) sit on top; `__init__` and `__main__` of the package are not layers."""


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "petridish" and len(parts) > 1 else None


def imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
    return out


def upward_imports() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        me = layer_of(".".join(("petridish", *path.relative_to(SRC).with_suffix("").parts)))
        if me in (None, "__init__", "__main__"):
            continue
        assert me in LAYERS, f"{path}: module {me!r} is in no layer; add it to LAYERS and CONTRIBUTING.md"
        for module in imports(path):
            other = layer_of(module)
            if other in LAYERS and LAYERS.index(other) > LAYERS.index(me):
                found.append(f"{path.relative_to(SRC)} ({me}) imports {module} ({other})")
    return found


def test_no_module_imports_a_later_layer():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "petridish"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "bad.py").write_text("from petridish.store import Store\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert upward_imports() == ["models/bad.py (models) imports petridish.store (store)"]


def test_the_layers_match_contributing():
    text = (SRC.parent.parent / "CONTRIBUTING.md").read_text()
    if "Layers" not in text:
        pytest.fail("CONTRIBUTING.md has no Layers section")
    assert " -> ".join(LAYERS) in " ".join(text.split())
