"""`selection`: P(policy | setting) per setting, and a phase diagram of the most probable policy over
two sweep axes. Metric names: `p.<label>` (Wilson over the run's networks), `agreement.<policy>`."""

from __future__ import annotations

import json
from typing import Any

from petridish.aggregate import Cell, INTERVAL_SUFFIXES, varying_keys
from petridish.config import flatten
from petridish.report.blocks import Figure, Note, Table
from petridish.report.load import StoredRun
from petridish.report.numbers import Value, cell_labels, cell_value
from petridish.report.plots import POLICY_COLOURS, grouped_bars, phase_diagram
from petridish.report.sections.base import INTERVALS, Family, done_cells, generic_blocks, labelled, ordered, other_metrics, register

POLICY_ORDER = ("aligned", "sycophant", "deceptive", "memorizer", "mixed")
MAX_FACETS = 4


def policies_in(grouped: list[Cell]) -> list[str]:
    names = {m[2:] for c in grouped for r in c.runs for m in r["metrics"] if m.startswith("p.") and not m.endswith(INTERVAL_SUFFIXES)}
    return ordered(names, POLICY_ORDER)


def render(runs: list[StoredRun]) -> list:
    grouped = done_cells(runs)
    policies = policies_in(grouped)
    if not policies:
        return generic_blocks(runs)
    labels = cell_labels(grouped)
    panels = [("P(policy | setting)", [[cell_value(c, f"p.{p}") for p in policies] for c in grouped])]
    bars = grouped_bars(labels, panels, [(p, POLICY_COLOURS.get(p, "#4b5563")) for p in policies], unit_interval=True)
    blocks: list = [Figure(bars, "How often training found each policy, per setting (a network is `mixed` when it agrees with no "
                                 "reference policy above the threshold). " + INTERVALS, "bar chart of P(policy | setting)")]
    blocks += phase_blocks(grouped, policies)
    blocks.append(table(grouped, labels, policies))
    shown = {f"p.{p}" for p in policies} | {f"agreement.{p}" for p in policies}
    return blocks + other_metrics(grouped, labels, shown, skip=("network.",))


def table(grouped: list[Cell], labels: list[str], policies: list[str]) -> Table:
    rows = [(labelled(cell, label), policy, cell_value(cell, f"p.{policy}"), cell_value(cell, f"agreement.{policy}"))
            for cell, label in zip(grouped, labels) for policy in policies]
    return Table(("setting", "policy", "P(policy | setting)", "mean agreement with it"), rows,
                 "P over the networks of a run (Wilson); agreement: the fraction of diagnostic prompts on which a network "
                 "answers as the policy does, averaged over networks (bootstrap).", group_first_column=True)


def sweep_axes(grouped: list[Cell]) -> dict[str, list[Any]]:
    """{dotted key: its values, sorted} for config keys that take two or more scalar values across cells."""
    axes = {}
    for key in varying_keys(grouped):
        values = [flatten(c.config).get(key) for c in grouped]
        if all(isinstance(v, (int, float, str, bool)) for v in values):
            axes[key] = sorted(set(values), key=lambda v: (str(type(v)), v))
    return axes


def phase_blocks(grouped: list[Cell], policies: list[str]) -> list:
    axes = sweep_axes(grouped)
    if len(axes) < 2:
        return [Note("A phase diagram of the selected policy appears when a sweep varies two settings "
                     "(e.g. [sweep.grid] over model.d_model and train.weight_decay).")]
    x_key, y_key = sorted(axes, key=lambda k: -len(axes[k]))[:2]
    rest = [k for k in axes if k not in (x_key, y_key)]
    facets: dict[str, list[Cell]] = {}
    for cell in grouped:
        flat = flatten(cell.config)
        facets.setdefault(", ".join(f"{k}={json.dumps(flat.get(k))}" for k in rest), []).append(cell)
    blocks: list = []
    for title, members in list(facets.items())[:MAX_FACETS]:
        winners = {(flatten(c.config)[x_key], flatten(c.config)[y_key]): most_probable(c, policies) for c in members}
        winners = {xy: w for xy, w in winners.items() if w is not None}
        uri = phase_diagram(x_key, axes[x_key], y_key, axes[y_key], winners, POLICY_COLOURS, title)
        caption = ("Each square: the policy training found most often at that setting, its P and 95% interval (Wilson over "
                   "networks, or a bootstrap across seeds); paler squares are less certain, blank ones were not run.")
        blocks.append(Figure(uri, caption + (f" Other settings: {title}." if title else ""), f"phase diagram over {x_key} and {y_key}"))
    if len(facets) > MAX_FACETS:
        blocks.append(Note(f"{len(facets) - MAX_FACETS} more combinations of {', '.join(rest)} are in the table below."))
    return blocks


def most_probable(cell: Cell, policies: list[str]) -> tuple[str, Value] | None:
    values = [(p, cell_value(cell, f"p.{p}")) for p in policies]
    values = [(p, v) for p, v in values if v is not None and v.ok]
    return max(values, key=lambda pv: pv[1].estimate.value) if values else None  # ties: the first in POLICY_ORDER


register("selection", Family(
    render=render,
    question=("Among policies that fit the training data equally well (aligned, sycophantic, deceptive, memorizing), "
              "which one does training find, and how does that depend on the setting?"),
    reference=("Published finding (Mingard et al. 2021, Is SGD a Bayesian sampler?): the probability that SGD finds a function "
               "tracks its prior probability under random initialisation, which strongly favours simple functions."),
    card_metrics=("p.aligned", "p.sycophant", "p.deceptive", "p.memorizer", "p.mixed"),
))
