"""`dual`: its budget runs trained as one ensemble match the same runs one by one."""

from dataclasses import replace

import pytest
from test_selection import tiny_dual  # tests/ is on sys.path (rootdir conftest, prepend import mode)

from petridish.experiments import NullContext
from petridish.experiments.dual import run as run_dual


def test_dual_budgets_trained_as_an_ensemble_match_their_solo_runs():
    config = replace(tiny_dual(), policies=("aligned", "deceptive", "memorizer"))
    together, alone = run_dual(config, NullContext()), run_dual(replace(config, ensemble=False), NullContext())
    assert together["ensemble_members"] == 6 and alone["ensemble_members"] == 1  # 3 policies x 2 seeds
    budgets = [k for k in alone if k.startswith("least_loss.") and (".width." in k or ".depth." in k)]
    assert len(budgets) == 3 * 3 * 4  # policies x (width 4, width 16, depth 1) x (mean, ci_low, ci_high, n)
    for key in budgets + [k for k in alone if k.endswith(("steps_to_eps", "reached_eps", "min_width"))]:
        assert together[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-5), key
    for key in ("param_norm", "bits", "llc", "feasible"):  # (a) is not trained in the ensemble: identical
        assert together[f"cost.memorizer.{key}"] == alone[f"cost.memorizer.{key}"]
