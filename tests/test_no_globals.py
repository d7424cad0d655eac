"""No module keeps trained organisms (or any tensor) in a global: reuse goes through runs, not memory."""

import sys

import torch
from helpers import tiny_persistence
from torch import nn

from petridish.experiments import NullContext
from petridish.experiments.persistence import run, run_many


def _holds_state(value, depth: int = 0) -> bool:
    if isinstance(value, (nn.Module, torch.Tensor)):
        return True
    if depth < 3 and isinstance(value, dict):
        return any(_holds_state(v, depth + 1) for v in value.values())
    if depth < 3 and isinstance(value, (list, tuple, set)):
        return any(_holds_state(v, depth + 1) for v in value)
    if (
        depth < 3
        and hasattr(value, "__dict__")
        and not isinstance(value, type)
        and type(value).__module__.startswith("petridish")
    ):
        return any(_holds_state(v, depth + 1) for v in vars(value).values())
    return False


def test_no_petridish_module_holds_a_model_or_tensor_after_runs():
    run(tiny_persistence(insert_steps=5, safety_steps=2), NullContext())
    run_many([tiny_persistence(seed=s, insert_steps=5, safety_steps=2) for s in (1, 2)], [NullContext(), NullContext()])
    held = [
        f"{name}.{attr}"
        for name, module in list(sys.modules.items())
        if name.startswith("petridish")
        for attr, value in vars(module).items()
        if not attr.startswith("__") and _holds_state(value)
    ]
    assert held == []


def test_the_check_sees_a_model_kept_in_a_global():
    module = sys.modules["petridish.experiments.persistence"]
    module._kept = {"organism": nn.Linear(2, 2)}  # what a module-level cache would do
    try:
        assert _holds_state(vars(module)["_kept"])
    finally:
        del module._kept
