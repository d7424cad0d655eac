"""Optional parts of petridish, each installed by an extra: `petridish[hf]` (transformers and peft:
Hugging Face organisms, LoRA, export) and `petridish[ray]` (the Ray executor). A feature whose extra is
missing stops with one line that names it, before any work is done."""

from __future__ import annotations

import importlib
from types import ModuleType

from petridish.errors import BadInput


class MissingExtra(BadInput):
    """A feature was asked for whose optional dependency is not installed. Exit code 2."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """`import module`, or a MissingExtra naming `feature` and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != module.split(".")[0]:
            raise  # the module is there but something it imports is not: a broken install, not a missing extra
        raise MissingExtra(
            f"{feature} needs {module}, which is not installed: pip install 'petridish[{extra}]'"
        ) from None
