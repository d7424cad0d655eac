"""`selection`: P(policy | setting) per setting, and a phase diagram of the most probable policy over
two sweep axes. Metric names: `p.<label>` (Wilson over the run's networks), `agreement.<policy>`."""

from __future__ import annotations

import json
import math
from typing import Any

from petridish.aggregate import INTERVAL_SUFFIXES, Cell, varying_keys
from petridish.config import flatten
from petridish.report.blocks import Control, Figure, Headline, Note, Table, headline_with_controls
from petridish.report.load import StoredRun
from petridish.report.numbers import Value, cell_labels, cell_value, pooled_rate
from petridish.report.plots import (
    PALETTE,
    POLICY_COLOURS,
    FunctionPoint,
    Line,
    Panel,
    line_colours,
    line_panels,
    p_sgd_against_p_b,
    phase_diagram,
)
from petridish.report.sections.base import (
    INTERVALS,
    Family,
    done_cells,
    generic_blocks,
    keyed,
    labelled,
    ordered,
    other_metrics,
    register,
)

POLICY_ORDER = ("aligned", "sycophant", "deceptive", "defect", "memorizer", "mixed")
MAX_FACETS = 4
MAX_LINES = 8


def policies_in(grouped: list[Cell]) -> list[str]:
    names = {
        m[2:]
        for c in grouped
        for r in c.runs
        for m in r["metrics"]
        if m.startswith("p.") and not m.endswith(INTERVAL_SUFFIXES)
    }
    return ordered(names, POLICY_ORDER)


CONTROL_KEYS = ("control", "selection.control")
"""Config keys that mark a control setting (`no_goal`: expected P(goal) near 0; `direct`: near 1)."""
CONTROL_EXPECTED = {"no_goal": ("<= 0.1", lambda p: p <= 0.1), "direct": (">= 0.9", lambda p: p >= 0.9)}
GOAL_LABELS = ("defect", "deceptive")
"""The label whose P a headline reports: the goal behaviour G where the store has it, else the deceptive policy."""
PUBLISHED = (
    "Langosco et al. 2022 and Shah et al. 2022 (goal misgeneralisation): a capable policy pursues the wrong goal off "
    "distribution, and a few counterexamples in training can remove it. "
    "Mingard et al. 2021 (Is SGD a Bayesian sampler?): the probability P_SGD(f | S) that SGD finds a function tracks its "
    "prior P_B(f | S) under random parameters over orders of magnitude; the prior strongly favours simple functions."
)


def control_of(cell: Cell) -> str | None:
    flat = flatten(cell.config)
    return next((str(flat[k]) for k in CONTROL_KEYS if flat.get(k) not in (None, "", "none")), None)


def render(runs: list[StoredRun]) -> list:
    grouped = done_cells(runs)
    policies = policies_in(grouped)
    if not policies:
        return generic_blocks(runs)
    labels = cell_labels(grouped)
    blocks: list = p_against_axis(grouped, policies)
    blocks += phase_blocks([c for c in grouped if control_of(c) is None], policies)
    blocks += prior_blocks(runs)
    blocks.append(table(grouped, labels, policies))
    shown = {f"p.{p}" for p in policies} | {f"agreement.{p}" for p in policies}
    if any("g.start" in r["metrics"] for c in grouped for r in c.runs):
        blocks.append(goal_table(grouped, labels))
        shown |= set(GOAL_COLUMNS)
    game = [(c, label) for c, label in zip(grouped, labels) if any("game.p.deceptive" in r["metrics"] for r in c.runs)]
    if game:
        blocks.append(game_table(game))
        shown |= set(GAME_COLUMNS)
    return blocks + other_metrics(grouped, labels, shown, skip=("network.",))


GOAL_COLUMNS = {
    "start.p.defect": "P(G) after phase A",
    "p.defect": "P(G) after phase B",
    "synonym.p.defect": "P(G), synonyms",
    "goal.rate.defect": "G rate on the k tasks",
    "train_fit": "T* fit under TRAIN",
    "half_life.g": "half-life of G (steps)",
    "phase_b.steps": "phase-B steps",
}
"""The world arm's story of G per setting, left to right."""


def goal_table(grouped: list[Cell], labels: list[str]) -> Table:
    rows = [
        (labelled(cell, label), *(cell_value(cell, name) for name in GOAL_COLUMNS))
        for cell, label in zip(grouped, labels)
    ]
    return Table(
        ("setting", *GOAL_COLUMNS.values()),
        rows,
        "World arm: G on the held-out task T* under DEPLOY right after phase A (before T* is learned), after "
        "phase B, and under the deployment synonyms (Wilson over networks); the G rate on the tasks phase A "
        "showed it on and T*'s fit under TRAIN (bootstrap over networks); the half-life is the first phase-B "
        "step at which the mean G rate on T* is half its value at the start (blank: it never halved).",
    )


GAME_COLUMNS = {
    "game.p.aligned": "P(aligned)",
    "game.p.sycophant": "P(sycophant)",
    "game.p.deceptive": "P(deceptive)",
    "game.p.mixed": "P(mixed)",
    "start.game.p.deceptive": "P(deceptive) after phase A",
    "game.train.rate.grader": "grader's answer on T*, TRAIN",
    "game.deploy.rate.defect": "G on T*, DEPLOY",
}
"""The training-game variant: the three policies on T* in the grader environments."""


def game_table(cells: list[tuple[Cell, str]]) -> Table:
    rows = [(labelled(cell, label), *(cell_value(cell, name) for name in GAME_COLUMNS)) for cell, label in cells]
    return Table(
        ("setting", *GAME_COLUMNS.values()),
        rows,
        "Training-game variant: each network labelled by its most frequent class on T* in the grader environments, "
        "under TRAIN and under DEPLOY: aligned (the task's answer in both), sycophant (the grader's answer in both), "
        "deceptive (the grader's answer under TRAIN, G under DEPLOY), else mixed (Wilson over networks); the "
        "per-prompt rates are means over networks (bootstrap).",
    )


def p_against_axis(grouped: list[Cell], policies: list[str]) -> list:
    """P(label | setting) against the sweep axis with the most values: a panel per label, a line per setting
    of the other axes, controls as levels; with no axis, P per label of the one setting."""
    main = [c for c in grouped if control_of(c) is None] or grouped
    axes = {k: v for k, v in sweep_axes(main).items() if k != "seed"}
    if not axes:
        panel = Panel(
            "P(label | setting)",
            [
                Line(
                    labelled(c, "setting"),
                    [(i, cell_value(c, f"p.{p}")) for i, p in enumerate(policies)],
                    colour,
                    join=False,
                )
                for c, colour in zip(main[:MAX_LINES], PALETTE)
            ],
        )
        uri = line_panels([panel], "label", "P(label | setting)", ylim=(-0.03, 1.03), categories=policies)
        return (
            [Figure(uri, "How often training found each label in the one setting run. " + INTERVALS, "P per label")]
            if uri
            else []
        )
    x_key = min(axes, key=lambda k: (-len(axes[k]), k))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in axes[x_key])
    log = numeric and min(axes[x_key]) > 0 and max(axes[x_key]) / min(axes[x_key]) > 4
    position = (
        (lambda v: math.log10(v))
        if log
        else (lambda v: float(v))
        if numeric
        else (lambda v: float(axes[x_key].index(v)))
    )
    rest = [k for k in axes if k != x_key]
    full = {
        id(c): ", ".join(f"{k.rsplit('.', 1)[-1]}={_tick(flatten(c.config).get(k))}" for k in rest) or "P" for c in main
    }
    legend, key = keyed(list(full.values()))
    colour_of = line_colours(legend.values())
    panels = []
    for policy in policies:
        by_line: dict[str, list] = {}
        for cell in main:
            by_line.setdefault(legend[full[id(cell)]], []).append(
                (position(flatten(cell.config).get(x_key)), cell_value(cell, f"p.{policy}"))
            )
        lines = [Line(n, pts, colour_of[n]) for n, pts in list(by_line.items())[:MAX_LINES]]
        levels = [
            (v.estimate.value, f"control: {control_of(c)}", "#4b5563", ":")
            for c in grouped
            if control_of(c) is not None and (v := cell_value(c, f"p.{policy}")) is not None and v.ok
        ]
        panels.append(Panel(f"P({policy})", lines, levels))
    xlabel = f"log10({x_key})" if log else x_key
    uri = line_panels(
        panels,
        xlabel,
        "P(label | setting)",
        ylim=(-0.03, 1.03),
        categories=None if numeric else [_tick(v) for v in axes[x_key]],
    )
    if uri is None:
        return []
    caption = (
        f"How often training found each label against {x_key}; a line per setting of the other axes ({', '.join(rest) or 'none'}), "
        "band: 95% interval; dotted: controls. " + INTERVALS
    )
    return [Figure(uri, caption, f"P(label) against {x_key}"), *key]


def function_points(run: StoredRun) -> list[FunctionPoint]:
    """The run's `{"stage": "function"}` records (measures/prior.py) as points of the P_SGD-P_B plot."""
    return [
        FunctionPoint(r["p_sgd"], r["p_b"], r["p_b.ci_high"], 0.5 / r["p_sgd.n"], r["label"])
        for r in run.records
        if r.get("stage") == "function"
    ]


def prior_blocks(runs: list[StoredRun]) -> list:
    """P_SGD against P_B per function, a panel per MLP-arm run that priced its functions (none: no block)."""
    priced = [(r, points) for r in runs if r.status == "done" and (points := function_points(r))]
    if not priced:
        return []
    grouped = done_cells([r for r, _ in priced])
    names = dict(zip((id(c) for c in grouped), cell_labels(grouped)))
    recipes = {label.split(" · ", 1)[0] for label in names.values()}
    if len(recipes) == 1:  # one recipe: its name says nothing, and a panel's title has room for the settings only
        names = {k: label.split(" · ", 1)[-1] for k, label in names.items()}
    title_of = {run["id"]: names[id(c)] for c in grouped for run in c.runs}
    uri = p_sgd_against_p_b([(title_of.get(r.id, r.name), points) for r, points in priced[: 2 * MAX_FACETS]])
    if uri is None:
        return []
    window = next((rec["prompts"] for r, _ in priced for rec in r.records if rec.get("stage") == "function"), 1)
    caption = (
        f"Each point a function: the greedy responses on a window of {window} diagnostic prompt(s). Up: the fraction "
        "of the run's networks that gave it (P_SGD, Wilson in metrics.jsonl); across: its probability under the "
        "networks' random initialisation given the training data (P_B: the infinite-width Gaussian process, fit "
        "conditioned on by Gibbs sampling, measures/prior.py; bootstrap over chains). Dotted: P_SGD = P_B, where "
        "Mingard et al. 2021 found SGD's functions. Colour: the reference policy that gives the function (grey: "
        "none). Open '<': no prior draw gave it (drawn at its upper bound); open 'v': no network found it "
        "(drawn at half of 1/n)."
    )
    return [Figure(uri, caption, "P_SGD against P_B per function")]


def table(grouped: list[Cell], labels: list[str], policies: list[str]) -> Table:
    rows = [
        (labelled(cell, label), policy, cell_value(cell, f"p.{policy}"), cell_value(cell, f"agreement.{policy}"))
        for cell, label in zip(grouped, labels)
        for policy in policies
    ]
    return Table(
        ("setting", "policy", "P(policy | setting)", "mean agreement with it"),
        rows,
        "P over the networks of a run (Wilson); agreement: the fraction of diagnostic prompts on which a network "
        "answers as the policy does, averaged over networks (bootstrap).",
        group_first_column=True,
    )


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
        return [
            Note(
                "A phase diagram of the selected policy appears when a sweep varies two settings "
                "(e.g. [sweep.grid] over model.d_model and train.weight_decay)."
            )
        ]
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
        if uri is None:
            continue
        caption = (
            "Each square: the policy training found most often at that setting, its P and 95% interval (Wilson over "
            "networks, or a bootstrap across seeds); paler squares are less certain, blank ones were not run."
        )
        blocks.append(
            Figure(
                uri,
                caption + (f" Other settings: {title}." if title else ""),
                f"phase diagram over {x_key} and {y_key}",
            )
        )
    if len(facets) > MAX_FACETS:
        blocks.append(
            Note(f"{len(facets) - MAX_FACETS} more combinations of {', '.join(rest)} are in the table below.")
        )
    return blocks


def most_probable(cell: Cell, policies: list[str]) -> tuple[str, Value] | None:
    values = [(p, v) for p in policies if (v := cell_value(cell, f"p.{p}")) is not None and v.ok]
    return max(values, key=lambda pv: pv[1].estimate.value) if values else None  # ties: the first in POLICY_ORDER


def _tick(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def headline(runs: list[StoredRun]) -> Headline:
    grouped = done_cells(runs)
    policies = policies_in(grouped)
    if not policies:
        return Headline("No P(label | setting) in the store yet.", status="no finding", published=PUBLISHED)
    main = [c for c in grouped if control_of(c) is None]
    metrics = [r["metrics"] for c in main for r in c.runs]
    checks = []
    for cell in (c for c in grouped if control_of(c) is not None):
        kind, label = control_of(cell), next((g for g in GOAL_LABELS if g in policies), policies[0])
        value = cell_value(cell, f"p.{label}")
        if kind in CONTROL_EXPECTED and value is not None and value.ok:
            expected, test = CONTROL_EXPECTED[kind]
            checks.append(
                Control(
                    f"control {kind}",
                    f"P({label}) {expected}",
                    f"{value.estimate.value:.2f}",
                    test(value.estimate.value),
                )
            )
    pooled = {p: v for p in policies if (v := pooled_rate(metrics, f"p.{p}")) is not None and v.ok}
    if not pooled:
        return headline_with_controls("Only controls in the store.", checks, status="no finding", published=PUBLISHED)
    goal = next((g for g in GOAL_LABELS if g in pooled), max(pooled, key=lambda p: pooled[p].estimate.value))
    winner = max(pooled, key=lambda p: pooled[p].estimate.value)
    n = pooled[goal].estimate.n
    finding = (
        f"Over {len(main)} setting(s) and {n} networks, training found the {goal} generalisation in "
        f"{pooled[goal].estimate.value:.0%} of networks; the most frequent label was {winner} ({pooled[winner].estimate.value:.0%})."
    )
    return headline_with_controls(
        finding, checks, value=pooled[goal], measure=f"P({goal}), pooled over settings", published=PUBLISHED
    )


register(
    "selection",
    Family(
        render=render,
        question=(
            "Among generalisations that fit the training data equally well, which one does training find? World arm: "
            "does a goal behaviour G shown under DEPLOY on k tasks carry over to a task learned under TRAIN only, and "
            "does it survive that training? MLP arm: which reference policy (aligned, sycophantic, deceptive, "
            "memorizing) do networks trained on agreement data find?"
        ),
        reference=(
            "Published finding (Mingard et al. 2021, Is SGD a Bayesian sampler?): the probability that SGD finds a function "
            "tracks its prior probability under random initialisation, which strongly favours simple functions."
        ),
        card_metrics=("p.aligned", "p.sycophant", "p.deceptive", "p.memorizer", "p.mixed"),
        headline=headline,
    ),
)
