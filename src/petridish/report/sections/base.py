"""The registry of section renderers, keyed by experiment name, and what every section shares.

A family's renderer gets the family's runs (done and failed) and returns the blocks of its section;
a family with no renderer gets the generic one (every metric of every cell with its interval and n).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from petridish.aggregate import Cell, cells
from petridish.report.blocks import Headline, Note, Section, Table
from petridish.report.load import StoredRun
from petridish.report.numbers import cell_labels, cell_value, point_metrics

Renderer = Callable[[list[StoredRun]], list]
Headliner = Callable[[list[StoredRun]], Headline]
INTERVALS = (
    "Error bars and brackets are 95% intervals stored with each metric (Wilson for a rate, a bootstrap for a mean) "
    "for one run; a bootstrap across seeds where a config has several (n = seeds)."
)


@dataclass(frozen=True)
class Family:
    render: Renderer
    question: str = ""
    reference: str = ""
    card_metrics: tuple[str, ...] = ()
    """Metrics each run's card shows up front."""
    headline: Headliner | None = None
    """The family's finding in one sentence, from its runs (None: the generic card)."""


FAMILIES: dict[str, Family] = {}
ORDER = ("persistence", "detection", "selection", "dual")
"""Families in the order of the design's four questions; others follow alphabetically."""


def register(experiment: str, family: Family) -> None:
    FAMILIES[experiment] = family


def anchor(experiment: str) -> str:
    return "family-" + (re.sub(r"[^a-z0-9]+", "-", experiment.lower()).strip("-") or "unnamed")


def build_section(experiment: str, runs: list[StoredRun]) -> Section:
    family = FAMILIES.get(experiment) or Family(render=generic_blocks)
    blocks = family.render(runs) + failed_blocks(runs)
    question = family.question or "No section of its own yet: every metric of every config, with its interval and n."
    return Section(anchor(experiment), experiment, question, family.reference, blocks)


def build_headline(experiment: str, runs: list[StoredRun]) -> Headline:
    """The family's headline card; a family without one (or without finished runs) says so."""
    family = FAMILIES.get(experiment)
    done = [r for r in runs if r.status == "done"]
    if not done:
        return Headline(f"No finished runs yet ({len(runs)} failed).", status="no finding")
    if family is None or family.headline is None:
        metrics = len(point_metrics(m for r in done for m in r.record.get("metrics", {})))
        return Headline(
            f"No headline for this family yet: {len(done)} finished run(s), {metrics} metric(s) in its section.",
            status="no finding",
        )
    return family.headline(runs)


KEY_AFTER = 34
"""Line names longer than this go into a key table; the legend shows a short code for them."""


def keyed(names: list[str]) -> tuple[dict[str, str], list]:
    """{name: legend label} and the blocks that explain them: names fit for a legend stay as they are;
    when any is longer, every line gets a code (A, B, ...) and a key table maps codes to names."""
    unique = list(dict.fromkeys(names))
    if all(len(name) <= KEY_AFTER for name in unique):
        return {name: name for name in unique}, []
    codes = {name: _code(i) for i, name in enumerate(unique)}
    return codes, [
        Table(
            ("line", "configuration"),
            [(codes[n], n) for n in unique],
            "Key to the lines of the figure above.",
            folded=False,
        )
    ]


def _code(index: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[index % 26] + (str(index // 26) if index >= 26 else "")


def done_cells(runs: list[StoredRun]) -> list[Cell]:
    """Finished runs grouped across seeds (`petridish.aggregate.cells`)."""
    return cells(r.record for r in runs if r.status == "done")


def labelled(cell: Cell, label: str) -> str:
    n = len(cell.runs)
    return f"{label} ({n} seed{'s' if n != 1 else ''})"


def generic_blocks(runs: list[StoredRun]) -> list:
    """Every metric of every cell, with its interval and n: the fallback for families without a section."""
    grouped = done_cells(runs)
    if not grouped:
        return [Note("No finished runs yet.")]
    rows = []
    for cell, label in zip(grouped, cell_labels(grouped)):
        for name in point_metrics(m for r in cell.runs for m in r["metrics"]):
            rows.append((labelled(cell, label), name, cell_value(cell, name)))
    caption = "Every metric per config; several seeds of one config are pooled (mean, bootstrap interval, n = seeds)."
    return [Table(("config", "metric", "value [95% CI] n"), rows, caption, group_first_column=True)]


def other_metrics(grouped: list[Cell], labels: list[str], shown: set[str], skip: tuple[str, ...] = ()) -> list:
    """Every metric a section did not plot (nor names starting with `skip`), so no number is hidden."""
    rows = [
        (labelled(cell, label), name, cell_value(cell, name))
        for cell, label in zip(grouped, labels)
        for name in point_metrics(m for r in cell.runs for m in r["metrics"])
        if name not in shown and not name.startswith(skip)
    ]
    if not rows:
        return []
    note = f" Per-item metrics ({', '.join(p + '*' for p in skip)}) are in each run's card." if skip else ""
    return [
        Table(
            ("config", "metric", "value [95% CI] n"),
            rows,
            "Every other metric of these runs (README, Metrics)." + note,
            group_first_column=True,
        )
    ]


def ordered(names, order: tuple[str, ...]) -> list[str]:
    """`names` in the order of `order`, unknown ones after it alphabetically."""
    return sorted(set(names), key=lambda name: (order.index(name) if name in order else len(order), name))


def failed_blocks(runs: list[StoredRun]) -> list:
    failed = [r for r in runs if r.status != "done"]
    if not failed:
        return []
    rows = [(r.name, r.id, r.record.get("error") or "no reason recorded") for r in failed]
    return [
        Table(
            ("failed run", "id", "reason"),
            rows,
            f"{len(failed)} run(s) did not finish; they are left out of the plots and tables above.",
        )
    ]
