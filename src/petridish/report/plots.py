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
from typing import Any, Callable, Sequence, cast

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from petridish.report.numbers import Value

POLICY_COLOURS = {
    "aligned": "#059669",
    "sycophant": "#d97706",
    "deceptive": "#c0392b",
    "memorizer": "#7c3aed",
    "mixed": "#9aa5b1",
}
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
        with rc_context(cast(Any, STYLE)):  # matplotlib types the rc keys as literals
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


@styled
def grouped_bars(
    labels: Sequence[str],
    panels: Sequence[tuple[str, Sequence[Row]]],
    series: Sequence[tuple[str, str]],
    unit_interval: bool = False,
    row_colours: Sequence[str] | None = None,
) -> Figure:
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
            colours: str | list[str] = list(row_colours) if row_colours is not None and k == 1 else colour
            ax.barh(
                rows + (index - (k - 1) / 2) * bar,
                centre,
                height=bar,
                xerr=error,
                color=colours,
                label=plain(name),
                error_kw={"ecolor": "#1f2933", "elinewidth": 0.9, "capsize": 2},
            )
        if unit_interval:
            ax.set_xlim(0, 1.02)
        ax.set_title(plain(title))
        ax.grid(axis="y", visible=False)
    axes[0].set_yticks(rows, [wrap_label(label) for label in labels])
    axes[0].set_ylim(n - 0.5, -0.5)
    if k > 1 and row_colours is None:
        figure.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncols=min(k, 5))
    return figure


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
    stage_names: list[list] = []
    for ax, panel in zip(axes, panels):
        fields = sorted(panel.lines, key=lambda f: -sum(map(len, panel.lines[f])))[:max_fields]
        for colour, name in zip(_cycle(PALETTE), fields):
            many = len(panel.lines[name]) > 1
            for line in panel.lines[name]:
                xs, ys = zip(*line)
                (handles[name],) = ax.plot(
                    xs,
                    ys,
                    color=colour,
                    linewidth=0.9 if many else 1.2,
                    alpha=0.55 if many else 1.0,
                    marker="." if len(xs) < 30 and not many else None,
                )
        values = [y for f in fields for line in panel.lines[f] for _, y in line if math.isfinite(y)]
        if values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        names = []
        for x, stage in panel.boundaries:
            ax.axvline(x, color="#9aa5b1", linewidth=0.8, linestyle=":")
            names.append(
                ax.annotate(
                    plain(stage),
                    (x, 1.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(3, -2),
                    textcoords="offset points",
                    va="top",
                    fontsize=8,
                    color="#52606d",
                )
            )
        stage_names.append(names)
        ax.set_title(plain(panel.title), fontsize=8.5, loc="left")
        ax.set_xlabel("step" + (" (stages end to end)" if len(panel.boundaries) > 1 else ""), fontsize=8)
    figure.legend(
        list(handles.values()),
        [plain(name) for name in handles],
        loc="outside lower center",
        ncols=min(len(handles), 4),
        fontsize=8,
    )
    for names in stage_names:
        _stack(figure, names)
    return figure


def _stack(figure: Figure, labels: list) -> None:
    """Move a stage name down a line while it would overprint an earlier one (short stages sit close together)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()  # the layout first: positions are final after it
    renderer = canvas.get_renderer()
    placed: list = []
    for label in labels:
        for _ in range(len(labels)):
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            x, y = label.xyann
            label.xyann = (x, y - 10)
        placed.append(label.get_window_extent(renderer))


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
def curves(
    panels: Sequence[tuple[str, str, dict[str, list[tuple[float, Value | None]]]]],
    colours: dict[str, str],
    ylabel: str,
    reference: tuple[float, str] | None = None,
    categorical: bool = False,
) -> Figure | None:
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
            ax.errorbar(
                xs,
                centre,
                yerr=error,
                color=colours.get(name, "#4b5563"),
                markersize=4,
                capsize=3,
                linewidth=1.3,
                label=plain(name),
                **style,
            )
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
def phase_diagram(
    x_key: str,
    xs: Sequence[Any],
    y_key: str,
    ys: Sequence[Any],
    winners: dict[tuple[Any, Any], tuple[str, Value]],
    colours: dict[str, str],
    title: str = "",
) -> Figure:
    """A square per (x, y) setting in the colour of its most probable policy, paler when that policy is
    less certain; the square says the policy, P and its 95% interval."""
    figure = Figure(figsize=(1.5 + 1.25 * len(xs), 1.2 + 0.95 * len(ys)), layout="constrained")
    ax = figure.subplots()
    image = np.ones((len(ys), len(xs), 3))
    for (x, y), (policy, value) in winners.items():
        i, j = list(ys).index(y), list(xs).index(x)
        strength = value.estimate.value if value.ok else 0.0
        rgb = np.array([int(colours.get(policy, "#4b5563")[k : k + 2], 16) / 255 for k in (1, 3, 5)])
        image[i, j] = 1 - (0.25 + 0.75 * strength) * (1 - rgb)  # mixed with white by certainty
        e = value.estimate
        ax.text(
            j,
            i,
            f"{plain(policy)}\nP={e.value:.2f}\n[{e.ci_low:.2f}, {e.ci_high:.2f}]",
            ha="center",
            va="center",
            fontsize=7.5,
            color="white" if strength > 0.6 else "#1f2933",
        )
    ax.imshow(image, aspect="auto", origin="lower", interpolation="nearest")
    ax.set_xticks(range(len(xs)), [plain(_tick(x)) for x in xs])
    ax.set_yticks(range(len(ys)), [plain(_tick(y)) for y in ys])
    ax.set(xlabel=plain(x_key), ylabel=plain(y_key), title=plain(title))
    ax.grid(False)
    ax.spines[:].set_visible(False)
    return figure


def _tick(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- the papers' idiom: small multiples of lines with 95% bands --------------------------------------


@dataclass
class Line:
    """One series of a panel: (x, value) points joined in x order, its 95% interval shaded."""

    label: str
    points: list[tuple[float, Value | None]]
    colour: str
    linestyle: str = "-"
    marker: str = "o"
    band: bool = True
    """Shade the 95% interval (else error bars)."""
    join: bool = True
    """Join the points with a line (controls are drawn as markers only)."""


@dataclass
class Panel:
    title: str
    lines: list[Line] = field(default_factory=list)
    levels: list[tuple[float, str, str, str]] = field(default_factory=list)
    """Horizontal reference lines: (y, legend label, colour, linestyle), e.g. chance or the level before training."""
    bands: list[tuple[float, float, str, str]] = field(default_factory=list)
    """Horizontal bands: (low, high, legend label, colour), e.g. the random-direction baseline."""


MAX_COLUMNS = 3
LEGEND_CHARS = 34


def colours_for(names: Sequence[str], known: dict[str, str]) -> dict[str, str]:
    """A distinct colour per name: its own where `known` has one, else the next palette colour no other name uses."""
    taken = {known[n] for n in names if n in known}
    spare = (c for c in PALETTE if c not in taken)
    return {n: known[n] if n in known else next(spare, "#4b5563") for n in names}


def line_colours(names) -> dict[str, str]:
    """One colour per line name, the same in every panel (names in sorted order round the palette)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(names)))}


def short(text: str, width: int = LEGEND_CHARS) -> str:
    """A label cut to `width` characters (legend entries and titles stay on one short line)."""
    return plain(textwrap.shorten(str(text), width, placeholder="…"))


@styled
def line_panels(
    panels: Sequence[Panel],
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    categories: Sequence[str] | None = None,
    sharey: bool = True,
    integer_x: bool = False,
) -> Figure | None:
    """Small multiples: one panel per `Panel`, up to three a row, y shared unless `sharey` is false (panels in
    different units); every series keeps its 95% interval as a shaded band (or error bars); one legend below
    for all panels. `categories` names integer x positions."""
    panels = [p for p in panels if any(_finite(line.points) for line in p.lines) or p.levels or p.bands]
    if not panels:
        return None
    columns = min(len(panels), MAX_COLUMNS)
    rows = math.ceil(len(panels) / columns)
    width = 3.3 * columns + 0.9
    figure = Figure(figsize=(width, 2.5 * rows + 0.9), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False, sharey=sharey)
    legend: dict[str, Any] = {}
    for ax, panel in zip(axes.flat, panels):
        _draw_panel(ax, panel, legend)
        ax.set_title(short(panel.title, 44))
        if ylim is not None:
            ax.set_ylim(*ylim)
        if categories is not None:
            ax.set_xticks(range(len(categories)), [short(c, 14) for c in categories], rotation=30, ha="right")
            ax.set_xlim(-0.5, len(categories) - 0.5)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for index, ax in enumerate(axes.flat[: len(panels)]):
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if index + columns >= len(panels):  # the lowest panel of its column
            ax.set_xlabel(plain(xlabel))
    for ax in axes[:, 0] if sharey else axes.flat[: len(panels)]:
        ax.set_ylabel(plain(ylabel))
    if legend:
        labels = {short(level[1]) for panel in panels for level in panel.levels} | {
            short(band[2]) for panel in panels for band in panel.bands
        }
        references = [name for name in legend if name in labels]
        legend = {
            name: legend[name] for name in references + sorted(n for n in legend if n not in references)
        }  # lines in key order
        longest = max(len(name) for name in legend)
        ncols = max(1, min(len(legend), int(width * 72 / (longest * 5.2 + 34))))
        figure.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=ncols, fontsize=8)
    return figure


def _finite(points) -> bool:
    return any(v is not None and v.ok for _, v in points)


def _draw_panel(ax, panel: Panel, legend: dict[str, Any]) -> None:
    for band_low, band_high, label, colour in panel.bands:
        legend.setdefault(short(label), ax.axhspan(band_low, band_high, color=colour, alpha=0.18, linewidth=0))
    for y, label, colour, linestyle in panel.levels:
        legend.setdefault(short(label), ax.axhline(y, color=colour, linewidth=1.0, linestyle=linestyle))
    for line in panel.lines:
        points = sorted(((x, v) for x, v in line.points if v is not None and v.ok), key=lambda p: p[0])
        if not points:
            continue
        xs = np.array([x for x, _ in points], dtype=float)
        centre = np.array([v.estimate.value for _, v in points])
        low = np.array([v.estimate.ci_low if math.isfinite(v.estimate.ci_low) else v.estimate.value for _, v in points])
        high = np.array(
            [v.estimate.ci_high if math.isfinite(v.estimate.ci_high) else v.estimate.value for _, v in points]
        )
        if line.band and line.join and len(points) > 1:
            ax.fill_between(xs, low, high, color=line.colour, alpha=0.15, linewidth=0)
            (handle,) = ax.plot(
                xs, centre, color=line.colour, linestyle=line.linestyle, marker=line.marker, markersize=4, linewidth=1.4
            )
        else:
            handle = ax.errorbar(
                xs,
                centre,
                yerr=[np.maximum(centre - low, 0), np.maximum(high - centre, 0)],
                color=line.colour,
                linestyle=line.linestyle if line.join else "none",
                marker=line.marker,
                markersize=5,
                capsize=3,
                linewidth=1.2,
            )
        legend.setdefault(short(line.label), handle)


def text_problems(figure: Figure) -> list[str]:
    """Text elements of a drawn figure (titles, axis labels, tick labels, legend entries, annotations) that
    overlap one another or reach past the figure's edge: what a reader could not read."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = (
        figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    )  # no pyplot: no drawing canvas yet
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = _texts(figure)
    boxes = [(t, t.get_window_extent(renderer)) for t in texts]
    edge = figure.bbox
    problems = []
    for text, box in boxes:
        if box.x0 < edge.x0 - 1 or box.y0 < edge.y0 - 1 or box.x1 > edge.x1 + 1 or box.y1 > edge.y1 + 1:
            problems.append(f"cut off by the figure edge: {text.get_text()!r}")
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            overlap_x = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            overlap_y = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            if overlap_x > 0.5 and overlap_y > 0.5:
                problems.append(f"overlap: {a.get_text()!r} and {b.get_text()!r}")
    return problems


def _texts(figure: Figure) -> list:
    found = []
    for ax in figure.axes:
        if not ax.get_visible():
            continue
        titles = [
            getattr(ax, name, None) for name in ("title", "_left_title", "_right_title")
        ]  # centre, left and right titles
        found += [t for t in titles if t is not None] + [ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis, (low, high) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            low, high = min(low, high), max(low, high)
            for tick in axis.get_major_ticks():
                if tick.label1.get_visible() and low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                    found.append(tick.label1)
        legend = ax.get_legend()
        if legend is not None:
            found += legend.get_texts()
    for legend in figure.legends:
        found += legend.get_texts()
    return [t for t in found if t.get_visible() and t.get_text().strip()]


@dataclass(frozen=True)
class FunctionPoint:
    """One function a selection run priced: how often training found it and its prior probability."""

    p_sgd: float
    p_b: float
    p_b_high: float
    """The upper end of P_B's interval (the plotted value where no prior draw gave the function)."""
    floor_sgd: float
    """Where a function training never found is drawn: half of 1 / networks."""
    label: str


@styled
def p_sgd_against_p_b(panels: Sequence[tuple[str, Sequence[FunctionPoint]]]) -> Figure | None:
    """Log-log small multiples of P_SGD against P_B, a point per function, coloured by the reference policy
    that gives it, with the diagonal P_SGD = P_B. Open markers sit at a bound, not a value: '<' where no
    prior draw gave the function (at P_B's upper bound), 'v' where no network found it (at half of 1/n)."""
    panels = [(title, points) for title, points in panels if points]
    if not panels:
        return None
    columns = min(len(panels), MAX_COLUMNS)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.3 * columns + 0.9, 3.0 * rows + 0.9), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    legend: dict[str, Any] = {}
    for ax, (title, points) in zip(axes.flat, panels):
        low = min(min(p.p_b if p.p_b > 0 else p.p_b_high, p.p_sgd if p.p_sgd > 0 else p.floor_sgd) for p in points)
        groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for p in points:
            marker = "<" if p.p_b == 0 else "v" if p.p_sgd == 0 else "o"
            xy = (p.p_b if p.p_b > 0 else p.p_b_high, p.p_sgd if p.p_sgd > 0 else p.floor_sgd)
            groups.setdefault((p.label.split("+")[0], marker), []).append(xy)
        for (label, marker), xys in sorted(groups.items()):
            colour = POLICY_COLOURS.get(label, "#9aa5b1")
            face = colour if marker == "o" else "none"
            xs, ys = zip(*xys)
            handle = ax.scatter(xs, ys, s=14, marker=marker, facecolors=face, edgecolors=colour, alpha=0.6)
            if marker == "o" or label not in legend:
                legend[plain(label)] = handle
        edge = 10 ** math.floor(math.log10(low))
        ax.plot([edge, 1], [edge, 1], color="#4b5563", linestyle=":", linewidth=1)
        ax.set(xscale="log", yscale="log", xlim=(edge, 1.5), ylim=(edge, 1.5), title=short(title, 44))
        ax.set_xlabel("P_B (prior, given the training data)")
        ax.set_ylabel("P_SGD (fraction of networks)")
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    figure.legend(
        list(legend.values()), list(legend), loc="outside lower center", ncols=min(len(legend), 5), fontsize=8
    )
    return figure
