"""Across seeds: group runs that differ only in `seed` into cells and summarise each metric with a
bootstrap 95% interval and the number of seeds. Reads stored run objects; trains nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from petridish.measures.stats import Estimate, bootstrap_mean

INTERVAL_SUFFIXES = (".ci_low", ".ci_high", ".n")


@dataclass
class Cell:
    experiment: str
    config: dict
    """The shared config, with `seed` removed."""
    runs: list[dict] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [r["config"].get("seed") for r in self.runs]

    def estimate(self, metric: str) -> Estimate:
        """Mean over seeds with a bootstrap 95% interval; n is the number of seeds with the metric."""
        values = [r["metrics"][metric] for r in self.runs if metric in r["metrics"]]
        return bootstrap_mean(values, seed=0)

    def summary(self, metrics: Iterable[str] | None = None) -> dict[str, float]:
        """{metric: mean, metric.ci_low, metric.ci_high, metric.n (seeds)} for every point metric."""
        names = metrics or sorted({m for r in self.runs for m in r["metrics"] if not m.endswith(INTERVAL_SUFFIXES)})
        out: dict[str, float] = {}
        for name in names:
            out.update(self.estimate(name).as_metrics(name))
        return out


def seedless(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "seed"}


def cells(runs: Iterable[dict[str, Any]]) -> list[Cell]:
    """Done runs grouped by (experiment, config without seed), in first-seen order."""
    grouped: dict[str, Cell] = {}
    for run in runs:
        if run.get("status", "done") != "done":
            continue
        key = json.dumps([run["experiment"], seedless(run["config"])], sort_keys=True)
        grouped.setdefault(key, Cell(run["experiment"], seedless(run["config"]))).runs.append(run)
    return list(grouped.values())


def varying_keys(cell_list: list[Cell]) -> list[str]:
    """Dotted config keys whose values differ between cells (what a table should label them by)."""
    from petridish.config import flatten

    flat = [flatten(c.config) for c in cell_list]
    keys = sorted({k for f in flat for k in f})
    return [k for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1]
