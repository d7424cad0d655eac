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
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

from petridish.report.numbers import Value

BEFORE, AFTER = "#9aa5b1", "#c0392b"
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


@styled
def before_after_bars(labels: Sequence[str], panels: Sequence[tuple[str, Sequence[tuple[Value | None, Value | None]]]]) -> Figure:
    """One panel per rate; per cell a bar before and a bar after safety training, with 95% intervals."""
    n, bar = len(labels), 0.38
    figure = Figure(figsize=(2.6 * len(panels) + 1.5, 1.1 + 0.5 * n), layout="constrained")
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    rows = np.arange(n)
    for ax, (title, pairs) in zip(axes, panels):
        for shift, index, colour, name in ((-bar / 2, 0, BEFORE, "before safety training"), (bar / 2, 1, AFTER, "after safety training")):
            centre, error = _centre_and_error([pair[index] for pair in pairs])
            ax.barh(rows + shift, centre, height=bar, xerr=error, color=colour, label=name,
                    error_kw={"ecolor": "#1f2933", "elinewidth": 0.9, "capsize": 2})
        ax.set_xlim(0, 1.02)
        ax.set_title(title)
        ax.grid(axis="y", visible=False)
    axes[0].set_yticks(rows, [wrap_label(label) for label in labels])
    axes[0].set_ylim(n - 0.5, -0.5)  # first cell on top, as in the table below
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncols=2)
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


@styled
def training_curves(records: Sequence[dict[str, Any]], max_fields: int = 6) -> Figure | None:
    """Every numeric field of metrics.jsonl against step; stages laid end to end, split by dotted lines."""
    series, boundaries = curve_series(records)
    if not series:
        return None
    fields = sorted(series, key=lambda f: -len(series[f]))[:max_fields]
    figure = Figure(figsize=(4.2, 2.3), layout="constrained")
    ax = figure.subplots()
    for colour, field in zip(_cycle(PALETTE), fields):
        xs, ys = zip(*series[field])
        ax.plot(xs, ys, color=colour, linewidth=1.2, marker="." if len(xs) < 30 else None, label=plain(field))
    values = [y for f in fields for _, y in series[f] if math.isfinite(y)]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    for x, stage in boundaries:
        ax.axvline(x, color="#9aa5b1", linewidth=0.8, linestyle=":")
        ax.annotate(plain(stage), (x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -2), textcoords="offset points",
                    va="top", fontsize=8, color="#52606d")
    ax.set_xlabel("step (stages end to end)" if len(boundaries) > 1 else "step")
    figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8)
    return figure


def curve_series(records: Sequence[dict[str, Any]]) -> tuple[dict[str, list[tuple[float, float]]], list[tuple[float, str]]]:
    """({field: [(x, y)]}, [(x where a stage starts, stage)]): each stage's steps continue after the last."""
    series: dict[str, list[tuple[float, float]]] = {}
    boundaries: list[tuple[float, str]] = []
    offset = last_x = 0.0
    stage = None
    for index, record in enumerate(records):
        if record.get("stage") != stage:
            stage, offset = record.get("stage"), last_x
            if isinstance(stage, str):
                boundaries.append((offset, stage))
        step = record.get("step")
        x = offset + step if _is_number(step) else float(index + 1)
        last_x = max(last_x, x)
        for field, y in record.items():
            if field != "step" and _is_number(y):
                series.setdefault(field, []).append((x, float(y)))
    return series, boundaries


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
