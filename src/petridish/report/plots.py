"""Plots for the report: matplotlib figures (no pyplot, so no global figure state) serialised to SVG
and inlined as data URIs, so the page needs no network and no files beside it.

Every error bar is a 95% interval; captions say which kind and what n counts.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

from petridish.report.numbers import Value

BEFORE, AFTER = "#9aa5b1", "#c0392b"
POLICY_COLOURS = {"aligned": "#059669", "sycophant": "#d97706", "deceptive": "#c0392b", "memorizer": "#7c3aed", "mixed": "#9aa5b1"}
DETECTOR_COLOURS = {"probe": "#2563eb", "contrast": "#059669", "anomaly": "#7c3aed", "random": "#6b7280"}
PALETTE = ("#2563eb", "#c0392b", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563")
STYLE = {
    "svg.fonttype": "path",  # glyphs as paths: the page looks the same without the fonts installed
    "svg.hashsalt": "petridish",  # deterministic element ids, so the same store gives the same page
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "legend.frameon": False,
}


def styled(plot: Callable[..., Figure | None]) -> Callable[..., str | None]:
    """Build the figure under the house style and return it as an SVG data URI (None: nothing to plot)."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs) -> str | None:
        with rc_context(STYLE):
            figure = plot(*args, **kwargs)
            return None if figure is None else to_uri(figure)

    return wrapper


def to_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plain(text: str) -> str:
    """User text for matplotlib: a `$` is a dollar sign, not the start of a formula."""
    return text.replace("$", r"\$")


def wrap_label(label: str, width: int = 34) -> str:
    """One line per ` · `-separated part, each wrapped at `width` characters."""
    return "\n".join(textwrap.fill(plain(part), width) for part in label.split(" · "))


def _size_ticks(ax, params: Sequence[float]) -> None:
    """Tick the parameter axis at the sizes that were run, written 15k, 1.2M."""
    sizes = sorted({p for p in params if p > 0})
    ax.set_xticks(sizes, [_short_count(p) for p in sizes])
    ax.minorticks_off()


def _short_count(x: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def _centre_and_error(values: Sequence[Value | None]) -> tuple[np.ndarray, np.ndarray]:
    """Bar lengths and asymmetric error sizes; a missing or undefined value draws nothing."""
    centre, low, high = [], [], []
    for v in values:
        e = v.estimate if v is not None and v.ok else None
        centre.append(e.value if e else math.nan)
        low.append(max(e.value - e.ci_low, 0.0) if e and math.isfinite(e.ci_low) else 0.0)
        high.append(max(e.ci_high - e.value, 0.0) if e and math.isfinite(e.ci_high) else 0.0)
    return np.array(centre), np.array([low, high])


Row = Sequence[Value | None]
"""One bar per series in a row of a grouped bar chart."""


def before_after_bars(labels: Sequence[str], panels: Sequence[tuple[str, Sequence[Row]]]) -> str:
    """One panel per rate; per cell a bar before and a bar after safety training, with 95% intervals."""
    return grouped_bars(labels, panels, (("before safety training", BEFORE), ("after safety training", AFTER)), unit_interval=True)


@styled
def grouped_bars(labels: Sequence[str], panels: Sequence[tuple[str, Sequence[Row]]], series: Sequence[tuple[str, str]],
                 unit_interval: bool = False, row_colours: Sequence[str] | None = None) -> Figure:
    """Horizontal bars with 95% error bars: a row per label, a bar per series in each row, a panel per
    measure (`panels`: (title, one Row per label)). Rows read top-down in the order of the tables.
    `row_colours` colours a single series by row instead (one colour per label)."""
    n, k = len(labels), len(series)
    bar = 0.8 / k
    figure = Figure(figsize=(max(2.6 * len(panels), 4.5) + 1.5, 1.1 + 0.18 * n * max(k, 2.5)), layout="constrained")
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    rows = np.arange(n)
    for ax, (title, values) in zip(axes, panels):
        for index, (name, colour) in enumerate(series):
            centre, error = _centre_and_error([row[index] for row in values])
            colour = list(row_colours) if row_colours is not None and k == 1 else colour
            ax.barh(rows + (index - (k - 1) / 2) * bar, centre, height=bar, xerr=error, color=colour, label=plain(name),
                    error_kw={"ecolor": "#1f2933", "elinewidth": 0.9, "capsize": 2})
        if unit_interval:
            ax.set_xlim(0, 1.02)
        ax.set_title(plain(title))
        ax.grid(axis="y", visible=False)
    axes[0].set_yticks(rows, [wrap_label(label) for label in labels])
    axes[0].set_ylim(n - 0.5, -0.5)
    if k > 1 and row_colours is None:
        figure.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncols=min(k, 5))
    return figure


@styled
def versus_size(series: dict[str, list[tuple[float, Value | None, Value | None, Value | None]]]) -> Figure:
    """Triggered defect rate (before dashed, after solid) and persistence against parameter count."""
    figure = Figure(figsize=(8.6, 3.4), layout="constrained")
    rates, persistence = figure.subplots(1, 2)
    all_params = [p[0] for points in series.values() for p in points]
    for colour, (label, points) in zip(_cycle(PALETTE), series.items()):
        points = sorted(points, key=lambda p: p[0])
        params = [p[0] for p in points]
        _errorbar(rates, params, [p[1] for p in points], colour, "--", "o", None, hollow=True)
        _errorbar(rates, params, [p[2] for p in points], colour, "-", "o", wrap_label(label, 40))
        _errorbar(persistence, params, [p[3] for p in points], colour, "-", "s", None)
    rates.set(xscale="log", ylim=(-0.02, 1.02), xlabel="parameters", ylabel="defect rate, triggered prompts",
              title="defect rate vs size (dashed: before, solid: after)")
    persistence.set(xscale="log", xlabel="parameters", ylabel="after / before", title="persistence vs size")
    _size_ticks(rates, all_params)
    _size_ticks(persistence, all_params)
    persistence.axhline(1.0, color="#9aa5b1", linewidth=0.8, linestyle=":")
    figure.legend(*rates.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(series), 3))
    return figure


def _errorbar(ax, xs, values, colour, linestyle, marker, label, hollow=False) -> None:
    centre, error = _centre_and_error(values)
    ax.errorbar(xs, centre, yerr=error, color=colour, linestyle=linestyle, marker=marker, markersize=4.5, capsize=3,
                linewidth=1.3, label=label, markerfacecolor="white" if hollow else colour)


def _cycle(colours: Sequence[str]):
    while True:
        yield from colours


@dataclass
class CurvePanel:
    """One panel of a run's training curves."""

    title: str
    lines: dict[str, list[list[tuple[float, float]]]] = field(default_factory=dict)
    """{field: one list of (x, y) per stage drawn in this panel}."""
    boundaries: list[tuple[float, str]] = field(default_factory=list)
    """(x where a stage starts, its name) for stages laid end to end."""


@styled
def training_curves(records: Sequence[dict[str, Any]], max_fields: int = 4, max_panels: int = 3) -> Figure | None:
    """metrics.jsonl as curves against step: one-off stages end to end (insert, then safety), repeated
    stages (train.0, train.1, ... of several networks) overlaid in a panel of their own."""
    panels = curve_panels(records)[:max_panels]
    if not panels:
        return None
    figure = Figure(figsize=(4.2, 0.5 + 1.9 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    handles: dict[str, Any] = {}
    for ax, panel in zip(axes, panels):
        fields = sorted(panel.lines, key=lambda f: -sum(map(len, panel.lines[f])))[:max_fields]
        for colour, name in zip(_cycle(PALETTE), fields):
            many = len(panel.lines[name]) > 1
            for line in panel.lines[name]:
                xs, ys = zip(*line)
                (handles[name],) = ax.plot(xs, ys, color=colour, linewidth=0.9 if many else 1.2, alpha=0.55 if many else 1.0,
                                           marker="." if len(xs) < 30 and not many else None)
        values = [y for f in fields for line in panel.lines[f] for _, y in line if math.isfinite(y)]
        if values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        for x, stage in panel.boundaries:
            ax.axvline(x, color="#9aa5b1", linewidth=0.8, linestyle=":")
            ax.annotate(plain(stage), (x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -2), textcoords="offset points",
                        va="top", fontsize=8, color="#52606d")
        ax.set_title(plain(panel.title), fontsize=8.5, loc="left")
        ax.set_xlabel("step" + (" (stages end to end)" if len(panel.boundaries) > 1 else ""), fontsize=8)
    figure.legend(list(handles.values()), [plain(name) for name in handles], loc="outside lower center", ncols=min(len(handles), 4), fontsize=8)
    return figure


def curve_panels(records: Sequence[dict[str, Any]]) -> list[CurvePanel]:
    """Records with a numeric `step` grouped into panels; records without one are summaries, not curves."""
    stages: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if _is_number(record.get("step")):
            stages.setdefault(str(record.get("stage", "")), []).append(record)
    kinds: dict[str, list[str]] = {}
    for stage in stages:
        kinds.setdefault(stage.split(".")[0], []).append(stage)
    sequence = CurvePanel("")
    panels = []
    for kind, members in kinds.items():
        if len(members) == 1:
            _append_end_to_end(sequence, members[0], stages[members[0]])
        else:
            panels.append(_overlay(f"{kind}: {len(members)} stages overlaid", [stages[m] for m in members]))
    return ([sequence] if sequence.lines else []) + panels


def _append_end_to_end(panel: CurvePanel, stage: str, records: list[dict[str, Any]]) -> None:
    offset = max((x for lines in panel.lines.values() for line in lines for x, _ in line), default=0.0)
    panel.boundaries.append((offset, stage))
    for name, points in _fields(records).items():
        panel.lines.setdefault(name, [[]])[0].extend((offset + x, y) for x, y in points)


def _overlay(title: str, groups: list[list[dict[str, Any]]]) -> CurvePanel:
    panel = CurvePanel(title)
    for records in groups:
        for name, points in _fields(records).items():
            panel.lines.setdefault(name, []).append(points)
    return panel


def _fields(records: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """{field: [(step, value)]} for every numeric field but the step."""
    out: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        for name, value in record.items():
            if name != "step" and _is_number(value):
                out.setdefault(name, []).append((float(record["step"]), float(value)))
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@styled
def curves(panels: Sequence[tuple[str, str, dict[str, list[tuple[float, Value | None]]]]], colours: dict[str, str],
           ylabel: str, reference: tuple[float, str] | None = None, categorical: bool = False) -> Figure | None:
    """Lines with 95% error bars: a panel per (title, xlabel, {series: [(x, value)]}); `reference` is a
    dotted horizontal line (e.g. chance); `categorical` x values are tick labels in the given order."""
    panels = [p for p in panels if any(p[2].values())]
    if not panels:
        return None
    figure = Figure(figsize=(3.6 * len(panels) + 0.6, 3.1), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, xlabel, series) in zip(axes, panels):
        ticks: list = []
        for name, points in series.items():
            ticks += [x for x, _ in points if x not in ticks]
        position = {x: i for i, x in enumerate(ticks)} if categorical else None
        for name, points in series.items():
            xs = [position[x] if position else x for x, _ in points]
            style = {"linestyle": "--", "marker": "x"} if name == "random" else {"linestyle": "-", "marker": "o"}
            centre, error = _centre_and_error([v for _, v in points])
            ax.errorbar(xs, centre, yerr=error, color=colours.get(name, "#4b5563"), markersize=4, capsize=3,
                        linewidth=1.3, label=plain(name), **style)
        if categorical:
            ax.set_xticks(range(len(ticks)), [plain(str(t)) for t in ticks], rotation=30, ha="right")
        elif ticks and min(ticks) > 0 and max(ticks) / min(ticks) > 4:
            ax.set_xscale("log")
            ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
            ax.minorticks_off()
        if reference is not None:
            ax.axhline(reference[0], color="#9aa5b1", linewidth=0.9, linestyle=":")
        ax.set(title=plain(title), xlabel=plain(xlabel))
    axes[0].set_ylabel(plain(ylabel))
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside upper center", ncols=min(len(names), 5))
    return figure


@styled
def phase_diagram(x_key: str, xs: Sequence[Any], y_key: str, ys: Sequence[Any], winners: dict[tuple[Any, Any], tuple[str, Value]],
                  colours: dict[str, str], title: str = "") -> Figure:
    """A square per (x, y) setting in the colour of its most probable policy, paler when that policy is
    less certain; the square says the policy, P and its 95% interval."""
    figure = Figure(figsize=(1.5 + 1.25 * len(xs), 1.2 + 0.95 * len(ys)), layout="constrained")
    ax = figure.subplots()
    image = np.ones((len(ys), len(xs), 3))
    for (x, y), (policy, value) in winners.items():
        i, j = list(ys).index(y), list(xs).index(x)
        strength = value.estimate.value if value.ok else 0.0
        rgb = np.array([int(colours.get(policy, "#4b5563")[k:k + 2], 16) / 255 for k in (1, 3, 5)])
        image[i, j] = 1 - (0.25 + 0.75 * strength) * (1 - rgb)  # mixed with white by certainty
        e = value.estimate
        ax.text(j, i, f"{plain(policy)}\nP={e.value:.2f}\n[{e.ci_low:.2f}, {e.ci_high:.2f}]", ha="center", va="center", fontsize=7.5,
                color="white" if strength > 0.6 else "#1f2933")
    ax.imshow(image, aspect="auto", origin="lower", interpolation="nearest")
    ax.set_xticks(range(len(xs)), [plain(_tick(x)) for x in xs])
    ax.set_yticks(range(len(ys)), [plain(_tick(y)) for y in ys])
    ax.set(xlabel=plain(x_key), ylabel=plain(y_key), title=plain(title))
    ax.grid(False)
    ax.spines[:].set_visible(False)
    return figure


def _tick(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
