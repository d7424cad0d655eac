"""Numbers as the report shows them: every value with its 95% interval and what n counts.

One run: the run's own interval (Wilson for a rate, a paired bootstrap for `persistence`) and its n
(evaluation prompts). Several seeds of one config: the mean over seeds with a bootstrap interval
(`petridish.aggregate`) and n = the number of seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from petridish.aggregate import INTERVAL_SUFFIXES, Cell, varying_keys
from petridish.config import flatten
from petridish.measures.stats import Estimate


@dataclass(frozen=True)
class Value:
    """A number with its interval and the count behind it; `over` says what n counts."""

    estimate: Estimate
    over: str
    """`samples` (one run's evaluation set, its stored interval), `seeds` (a bootstrap across runs) or
    `runs` (a bootstrap across the runs of several configs, for a headline), or
    `none` (stored without an interval: a count or setting such as params; n counts the runs, which agree)."""

    @property
    def ok(self) -> bool:
        return math.isfinite(self.estimate.value)


def point_metrics(metrics: Iterable[str]) -> list[str]:
    """Metric names without their `.ci_low/.ci_high/.n` companions, sorted."""
    return sorted({m for m in metrics if not m.endswith(INTERVAL_SUFFIXES)})


def run_value(metrics: dict[str, float], name: str) -> Value | None:
    """One run's metric with the interval it was stored with; None when absent."""
    if name not in metrics:
        return None
    value = float(metrics[name])
    if f"{name}.ci_low" in metrics:
        n = metrics.get(f"{name}.n", 0)
        return Value(
            Estimate(value, float(metrics[f"{name}.ci_low"]), float(metrics[f"{name}.ci_high"]), int(n)), "samples"
        )
    return Value(Estimate(value, math.nan, math.nan, 1), "none")


def cell_value(cell: Cell, name: str) -> Value | None:
    """A cell's metric: the run's own interval for one seed, a bootstrap across seeds for several."""
    having = [r for r in cell.runs if name in r["metrics"]]
    if not having:
        return None
    if len(having) == 1:
        return run_value(having[0]["metrics"], name)
    values = {r["metrics"][name] for r in having}
    if len(values) == 1 and not any(f"{name}.ci_low" in r["metrics"] for r in having):
        return Value(Estimate(values.pop(), math.nan, math.nan, len(having)), "none")  # a setting, e.g. params
    return Value(cell.estimate(name), "seeds")


def fmt(x: float, like: float | None = None) -> str:
    """A number short enough for a table, with as many decimals as `like` (default: x itself) needs for
    4 significant digits: 3 decimals up to 1 in size (rates), whole numbers with separators from 1000."""
    if x is None or not math.isfinite(x):
        return "undefined"
    scale = abs(x if like is None or not math.isfinite(like) else like)
    if scale <= 1:
        return f"{x:.3f}"
    if scale >= 1000 or (like is None and float(x).is_integer()):
        return f"{x:,.0f}"
    return f"{x:.{max(0, 3 - math.floor(math.log10(scale)))}f}"


def interval_text(value: Value) -> str:
    e = value.estimate
    if value.over == "none":
        return ""
    if not (math.isfinite(e.ci_low) and math.isfinite(e.ci_high)):
        return "[undefined]"
    like = e.value if math.isfinite(e.value) else max(abs(e.ci_low), abs(e.ci_high))
    return f"[{fmt(e.ci_low, like)}, {fmt(e.ci_high, like)}]"


def n_text(value: Value) -> str:
    n = value.estimate.n
    plural = "s" if n != 1 else ""
    return {
        "seeds": f"{n} seed{plural}",
        "samples": f"n={n:,}",
        "runs": f"{n} run{plural}",
        "none": f"{n} run{plural}" + (", identical" if n > 1 else ""),
    }[value.over]


def explain(value: Value) -> str:
    """A tooltip: what the interval is and what n counts."""
    n = value.estimate.n
    return {
        "seeds": f"mean over {n} seeds; 95% percentile bootstrap interval across seeds",
        "samples": f"one run; 95% interval stored with the metric (Wilson for a rate), over {n} samples",
        "runs": f"mean over {n} runs (configs and seeds); 95% percentile bootstrap interval across runs",
        "none": "stored without an interval: a count or a setting (e.g. params), not an estimate",
    }[value.over]


def cell_labels(cells: list[Cell], ignore: tuple[str, ...] = ()) -> list[str]:
    """A short label per cell: the recipe name, then the config keys that tell its cells apart
    (leaving out keys that start with one of `ignore`)."""
    bases = [c.runs[0]["name"].split("[")[0] or c.runs[0]["id"] for c in cells]
    labels = []
    for cell, base in zip(cells, bases):
        siblings = [c for c, b in zip(cells, bases) if b == base]
        keys = [k for k in varying_keys(siblings) if not k.startswith(ignore)] if len(siblings) > 1 else []
        flat = flatten(cell.config)
        parts = [f"{key}={_short(flat.get(key))}" for key in keys]
        labels.append(" · ".join([base, *parts]))
    return labels


def _short(value: Any) -> str:
    return fmt(value) if isinstance(value, float) else str(value)


def pooled_value(metric_sets: list[dict[str, float]], name: str) -> Value | None:
    """One number for a headline: a single run's metric with its stored interval, or the mean over runs
    with a percentile bootstrap interval across them (n = runs)."""
    from petridish.measures.stats import bootstrap_mean

    having = [m for m in metric_sets if name in m and math.isfinite(float(m[name]))]
    if not having:
        return None
    if len(having) == 1:
        return run_value(having[0], name)
    return Value(bootstrap_mean([float(m[name]) for m in having], seed=0), "runs")


def pooled_rate(metric_sets: list[dict[str, float]], name: str) -> Value | None:
    """A rate pooled over runs by its counts (rate x n): one Wilson interval over every sample (n = samples)."""
    from petridish.measures.stats import wilson

    having = [m for m in metric_sets if name in m and f"{name}.n" in m]
    if not having:
        return None
    total = sum(int(m[f"{name}.n"]) for m in having)
    if total == 0:
        return None
    hits = sum(round(float(m[name]) * int(m[f"{name}.n"])) for m in having)
    return Value(wilson(hits, total), "samples")
