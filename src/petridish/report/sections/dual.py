"""`dual`: each policy's cost both ways round. Loss-vs-budget curves (`least_loss.<policy>.<norm|width|depth>.<b>`)
and complexity per policy at the loss bound (`cost.<policy>.<measure>`); on the world's environments, cost
against E per labelling (`cost.<labelling>.<measure>.E<E>`) and P(derive) against E (`p.derive.E<E>`);
intervals are over the run's networks."""

from __future__ import annotations

import re

from petridish.aggregate import INTERVAL_SUFFIXES, Cell
from petridish.config import flatten
from petridish.report.blocks import Control, Figure, Headline, Note, Table, headline_with_controls
from petridish.report.load import StoredRun
from petridish.report.numbers import cell_labels, cell_value, pooled_value
from petridish.report.plots import POLICY_COLOURS, Line, Panel, colours_for, curves, grouped_bars, line_panels
from petridish.report.sections.base import (
    INTERVALS,
    Family,
    done_cells,
    generic_blocks,
    labelled,
    ordered,
    other_metrics,
    register,
)
from petridish.report.sections.selection import POLICY_ORDER

COSTS = (
    ("param_norm", "parameter norm"),
    ("bits", "compressed size (bits)"),
    ("llc", "local learning coefficient"),
    ("steps_to_eps", "steps to loss <= eps"),
    ("min_width", "minimal width"),
)
BUDGETS = (("norm", "L2-norm radius"), ("width", "width (d_model)"), ("depth", "depth (layers)"))
COST_BY_E = re.compile(r"^cost\.(?P<labelling>[^.]+)\.(?P<measure>.+)\.E(?P<E>\d+)$")
E_MEASURES = ("param_norm", "bits", "llc", "min_width.depth1", "min_width.depth2", "steps_to_eps")
"""The measures drawn against E (the others: feasibility, reach rates, the second LLC step size, are in the tables)."""
RATE_BY_E = re.compile(r"^p\.(?P<label>derive|default)\.E(?P<E>\d+)$")
ARM_RATE_BY_E = re.compile(r"^(?P<arm>facts|no_facts|unseen|direct)\.rate\.derive\.E(?P<E>\d+)$")
ARMS = (  # the transformer arm (`arm = "derive"`): the experiment, its baseline, the two controls
    ("facts", "facts (the experiment)", "#dc2626", "-"),
    ("no_facts", "no facts (baseline)", "#6b7280", "--"),
    ("unseen", "unseen transform (negative control)", "#2563eb", ":"),
    ("direct", "held-out acted (positive control)", "#16a34a", ":"),
)
PUBLISHED = (
    "No published figure: the dual problems come from the deceptive-alignment argument, not a measurement "
    "(Carlsmith 2023 puts a schemer's simplicity advantage in its goal and its cost in run-time reasoning)."
)
BUDGET_METRIC = re.compile(r"^least_loss\.(?P<policy>[^.]+)\.(?P<kind>norm|width|depth)\.(?P<budget>[0-9p]+)$")
MAX_CELLS = 6


def policies_in(grouped: list[Cell]) -> list[str]:
    names = {
        m.split(".")[1]
        for c in grouped
        for r in c.runs
        for m in r["metrics"]
        if m.startswith("cost.") and m.count(".") >= 2 and not m.endswith(INTERVAL_SUFFIXES)
    }
    return ordered(names, POLICY_ORDER)


def render(runs: list[StoredRun]) -> list:
    grouped = done_cells(runs)
    policies = policies_in(grouped)
    labels = cell_labels(grouped)
    derived = [fig for cell, label in zip(grouped, labels) for fig in derive_against_e(cell, label)]
    if not policies:
        return derived + generic_blocks(runs) if derived else generic_blocks(runs)
    blocks: list = derived
    for cell, label in list(zip(grouped, labels))[:MAX_CELLS]:
        blocks += cell_figures(cell, label, policies)
    if len(grouped) > MAX_CELLS:
        blocks.append(Note(f"Plots for the first {MAX_CELLS} of {len(grouped)} configs; the tables cover them all."))
    blocks.append(table(grouped, labels, policies))
    shown = {f"cost.{p}.{m}" for p in policies for m, _ in COSTS}
    shown |= {m for c in grouped for r in c.runs for m in r["metrics"] if BUDGET_METRIC.match(m)}
    return blocks + other_metrics(grouped, labels, shown)


def cost_against_e(cell: Cell, label: str) -> list:
    """Cost against the number of environments E, a panel per measure, a line per labelling (`cost.*.E{E}`)."""
    found: dict[str, dict[str, list]] = {}
    for name in sorted({m for r in cell.runs for m in r["metrics"] if not m.endswith(INTERVAL_SUFFIXES)}):
        match = COST_BY_E.match(name)
        if match and match["measure"] in E_MEASURES and priced_at_eps(cell, match):
            found.setdefault(match["measure"], {}).setdefault(match["labelling"], []).append(
                (int(match["E"]), cell_value(cell, name))
            )
    if not found:
        return []
    colours = colours_for(sorted({lab for series in found.values() for lab in series}), POLICY_COLOURS)
    panels = [
        Panel(measure.replace("_", " "), [Line(lab, pts, colours[lab]) for lab, pts in series.items()])
        for measure, series in found.items()
    ]
    uri = line_panels(panels, "E (environments)", "cost at loss <= eps", sharey=False)
    return (
        [
            Figure(
                uri,
                f"{label}: what each labelling costs as the number of environments grows. " + INTERVALS,
                "cost against E per labelling",
            )
        ]
        if uri
        else []
    )


def priced_at_eps(cell: Cell, match: re.Match) -> bool:
    """(a)'s least norm is a cost at loss <= eps only where every network reached eps (`.feasible` = 1):
    elsewhere it is the last Lagrangian iterate's norm, and is left out of the figure and the headline."""
    if match["measure"] != "param_norm":
        return True
    feasible = cell_value(cell, f"cost.{match['labelling']}.feasible.E{match['E']}")
    return feasible is None or feasible.estimate.value >= 1


def p_derive_against_e(cell: Cell, label: str) -> list:
    """P(derive) and P(lookup's default) on held-out environments against E (`p.derive.E{E}`, `p.default.E{E}`)."""
    found: dict[str, list] = {}
    for name in sorted({m for r in cell.runs for m in r["metrics"] if not m.endswith(INTERVAL_SUFFIXES)}):
        match = RATE_BY_E.match(name)
        if match:
            found.setdefault(match["label"], []).append((int(match["E"]), cell_value(cell, name)))
    if not found:
        return []
    colours = {"derive": "#dc2626", "default": "#2563eb"}
    panel = Panel(
        "held-out environments",
        [Line(lab, sorted(pts, key=lambda p: p[0]), colours[lab]) for lab, pts in found.items()],
    )
    uri = line_panels([panel], "E (training environments)", "share of responses", ylim=(0.0, 1.0))
    caption = (
        f"{label}: networks trained on the training environments only (and every environment's fact); on held-out "
        "environments, the share of responses that apply the environment's transform (derive) or keep the task's "
        "answer (lookup's default). " + INTERVALS
    )
    return [Figure(uri, caption, "P(derive) against E")] if uri else []


def derive_against_e(cell: Cell, label: str) -> list:
    """The transformer arm: on held-out environments, the share of responses that apply the transform the
    environment's fact names, against E, for the experiment, its no-facts baseline and both controls."""
    found: dict[str, list] = {}
    for name in sorted({m for r in cell.runs for m in r["metrics"] if not m.endswith(INTERVAL_SUFFIXES)}):
        match = ARM_RATE_BY_E.match(name)
        if match:
            found.setdefault(match["arm"], []).append((int(match["E"]), cell_value(cell, name)))
    lines = [
        Line(title, sorted(found[arm], key=lambda p: p[0]), colour, linestyle=style)
        for arm, title, colour, style in ARMS
        if arm in found
    ]
    if not lines:
        return []
    uri = line_panels(
        [Panel("transformers, held-out environments", lines)],
        "E (training environments)",
        "share that derive",
        ylim=(0.0, 1.0),
    )
    caption = (
        f"{label}: transformers trained on every environment's fact and the training environments' actions; on "
        "held-out environments (each rewarding a transform some training environment rewards), the share of "
        "responses that apply the transform the environment's fact names. Baseline: the same without the held-out "
        "facts. Controls: a transform no environment acts (must stay near 0), held-out environments with action "
        "data (must reach about 1). Means over the networks that fit their data. " + INTERVALS
    )
    return [Figure(uri, caption, "transformers: P(derive) against E")] if uri else []


def cell_figures(cell: Cell, label: str, policies: list[str]) -> list:
    eps = flatten(cell.config).get("eps")
    panels = [
        (f"least loss under a {kind} budget", f"budget: {xlabel}", budget_series(cell, kind, policies))
        for kind, xlabel in BUDGETS
    ]
    out = cost_against_e(cell, label) + p_derive_against_e(cell, label)
    uri = curves(
        panels,
        POLICY_COLOURS,
        "least training loss (nats/token)",
        reference=(eps, "eps") if isinstance(eps, (int, float)) else None,
    )
    if uri:
        out.append(
            Figure(
                uri,
                f"{label}: (b) complexity as the constraint — the least training loss each policy reaches "
                f"inside each budget (dotted: the loss bound eps = {eps}). " + INTERVALS,
                "loss against budget per policy",
            )
        )
    costs = [
        (title, [[cell_value(cell, f"cost.{p}.{m}")] for p in policies])
        for m, title in COSTS
        if any(cell_value(cell, f"cost.{p}.{m}") for p in policies)
    ]
    uri = (
        grouped_bars(
            policies,
            costs,
            [("mean over networks", "#2563eb")],
            row_colours=list(colours_for(policies, POLICY_COLOURS).values()),
        )
        if costs
        else None
    )
    if uri:
        out.append(
            Figure(
                uri,
                f"{label}: (a) loss as the constraint — what each policy costs at training loss <= eps "
                "(missing bars: no network reached eps). " + INTERVALS,
                "complexity per policy",
            )
        )
    return out


def budget_series(cell: Cell, kind: str, policies: list[str]) -> dict[str, list]:
    names = {m for r in cell.runs for m in r["metrics"] if not m.endswith(INTERVAL_SUFFIXES)}
    series = {}
    for policy in policies:
        points = []
        for name in names:
            match = BUDGET_METRIC.match(name)
            if match and match["policy"] == policy and match["kind"] == kind:
                points.append((float(match["budget"].replace("p", ".")), cell_value(cell, name)))
        if points:
            series[policy] = sorted(points, key=lambda p: p[0])
    return series


def table(grouped: list[Cell], labels: list[str], policies: list[str]) -> Table:
    rows = [
        (labelled(cell, label), policy, *(cell_value(cell, f"cost.{policy}.{m}") for m, _ in COSTS))
        for cell, label in zip(grouped, labels)
        for policy in policies
    ]
    return Table(
        ("config", "policy", *(title for _, title in COSTS)),
        rows,
        "Cost of each policy at training loss <= eps: means over the run's networks with bootstrap intervals.",
        group_first_column=True,
    )


def headline(runs: list[StoredRun]) -> Headline:
    metrics = [r.record["metrics"] for r in runs if r.status == "done"]
    checks = []
    sanity = [m["memorizer_costs_more"] for m in metrics if "memorizer_costs_more" in m]
    if sanity:
        checks.append(
            Control(
                "sanity: the memorizer costs more than aligned",
                "in every measure, every run",
                f"{sum(v > 0 for v in sanity)} of {len(sanity)} runs",
                all(v > 0 for v in sanity),
            )
        )
    null = [m["lookup_equals_derive.E1"] for m in metrics if "lookup_equals_derive.E1" in m]
    if null:
        checks.append(
            Control(
                "negative: with E = 1, lookup and derive (then one function) cost the same",
                "within their intervals, every run",
                f"{sum(v > 0 for v in null)} of {len(null)} runs",
                all(v > 0 for v in null),
            )
        )
    checks += derive_controls(metrics)
    world = world_finding(metrics, checks)
    if world is not None:
        return world
    derived = derive_finding(metrics, checks)
    if derived is not None:
        return derived
    excess = pooled_value(metrics, "memorizer_excess.param_norm")
    if excess is not None and excess.ok:
        e = excess.estimate
        word = "more" if e.ci_low > 0 else "less" if e.ci_high < 0 else "no clearly different"
        finding = (
            f"At training loss <= eps the memorizer needed {word} parameter norm than the aligned policy "
            f"(difference {e.value:+.2f})."
        )
        return headline_with_controls(
            finding, checks, value=excess, measure="memorizer minus aligned, least parameter norm", published=PUBLISHED
        )
    costs = {
        p: v
        for p in policies_in(done_cells(runs))
        if (v := pooled_value(metrics, f"cost.{p}.param_norm")) is not None and v.ok
    }
    if not costs:
        return headline_with_controls(
            "No policy's cost in the store yet.", checks, status="no finding", published=PUBLISHED
        )
    cheap, dear = min(costs, key=lambda p: costs[p].estimate.value), max(costs, key=lambda p: costs[p].estimate.value)
    finding = (
        f"At training loss <= eps, {cheap} needed the least parameter norm ({costs[cheap].estimate.value:.2f}) and "
        f"{dear} the most ({costs[dear].estimate.value:.2f})."
    )
    return headline_with_controls(
        finding, checks, value=costs[dear], measure=f"least parameter norm, {dear}", published=PUBLISHED
    )


def world_finding(metrics: list[dict[str, float]], checks: list[Control]) -> Headline | None:
    """On the world's environments: lookup against derive in least parameter norm at the largest E stored."""

    def feasible(labelling: str, E: int) -> bool:
        rate = pooled_value(metrics, f"cost.{labelling}.feasible.E{E}")
        return rate is None or rate.estimate.value >= 1  # see priced_at_eps

    es = sorted({int(m.group("E")) for ms in metrics for k in ms if (m := COST_BY_E.match(k))})
    es = [E for E in es if feasible("sycophant_lookup", E) and feasible("sycophant_derive", E)]
    if not es:
        return None
    E = es[-1]
    lookup = pooled_value(metrics, f"cost.sycophant_lookup.param_norm.E{E}")
    derive = pooled_value(metrics, f"cost.sycophant_derive.param_norm.E{E}")
    if lookup is None or derive is None or not (lookup.ok and derive.ok):
        return None
    a, b = lookup.estimate, derive.estimate
    word = "more" if a.ci_low > b.ci_high else "less" if a.ci_high < b.ci_low else "about the same (intervals overlap)"
    finding = (
        f"With E = {E} training environments, looking up what each rewards cost {word} parameter norm than "
        f"deriving it from the facts ({a.value:.2f} against {b.value:.2f})."
    )
    return headline_with_controls(
        finding, checks, value=lookup, measure=f"least parameter norm, sycophant_lookup, E = {E}", published=PUBLISHED
    )


def derive_controls(metrics: list[dict[str, float]]) -> list[Control]:
    """The transformer arm's controls: the unseen transform stays near 0, the acted held-out near 1."""
    checks = []
    for key, name, target in (
        (
            "controls.unseen",
            "negative: a transform no environment acts is not derived",
            "rate.derive <= 0.05 at every E",
        ),
        (
            "controls.direct",
            "positive: held-out environments with action data are acted",
            "rate.derive >= 0.9 at every E",
        ),
    ):
        found = [m[key] for m in metrics if key in m]
        if found:
            checks.append(
                Control(name, target, f"{sum(v > 0 for v in found)} of {len(found)} runs", all(v > 0 for v in found))
            )
    return checks


def derive_finding(metrics: list[dict[str, float]], checks: list[Control]) -> Headline | None:
    """The transformer arm alone: facts against no facts in rate.derive at the largest E stored."""
    es = sorted(
        {int(m.group("E")) for ms in metrics for k in ms if (m := ARM_RATE_BY_E.match(k)) and m["arm"] == "facts"}
    )
    if not es:
        return None
    E = es[-1]
    facts, excess = (
        pooled_value(metrics, f"facts.rate.derive.E{E}"),
        pooled_value(metrics, f"facts_minus_no_facts.E{E}"),
    )
    if facts is None or excess is None or not (facts.ok and excess.ok):
        return None
    d = excess.estimate
    word = "more often" if d.ci_low > 0 else "less often" if d.ci_high < 0 else "no more often"
    finding = (
        f"With E = {E} training environments, transformers applied a held-out environment's transform {word} when "
        f"they had read its fact ({facts.estimate.value:.2f} of responses; {d.value:+.2f} against no facts)."
    )
    return headline_with_controls(
        finding, checks, value=excess, measure=f"rate.derive, facts minus no facts, E = {E}", published=PUBLISHED
    )


register(
    "dual",
    Family(
        render=render,
        question="What does each policy cost in inductive bias, asked both ways: least complexity at a loss bound, least loss under a budget?",
        reference=(
            "The deceptive-alignment debate frames inductive bias as two dual problems: minimise loss subject to a complexity "
            "budget, or minimise complexity subject to a loss bound. A memorizer stores its training set, so it should cost "
            "the most; whether the deceptive policy costs more than the aligned one is the open question."
        ),
        card_metrics=("cost.aligned.param_norm", "cost.deceptive.param_norm", "cost.memorizer.param_norm"),
        headline=headline,
    ),
)
