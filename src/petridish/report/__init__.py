"""The report: one self-contained HTML page built from the store (and nothing else).

    petridish report [--store DIR] [--out FILE]

First a headline card per experiment family (its finding in one sentence, written from the numbers,
beside the published figure); then a section per family (figures in the papers' idiom, every number
behind them in folded tables); then a card per run with its training curves, transcripts and provenance.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from petridish.errors import BadInput
from petridish.report.html import Page, render_page
from petridish.report.load import StoredRun, load_runs
from petridish.report.runs import run_card
from petridish.report.sections import FAMILIES, ORDER, build_headline, build_section
from petridish.store import Store


def build_report(store_root: str | Path | None = None, generated: str | None = None) -> str:
    """The HTML text of the report for the store at `store_root`."""
    store, runs = load_runs(store_root)
    families = sorted({r.experiment for r in runs}, key=lambda e: (ORDER.index(e) if e in ORDER else len(ORDER), e))
    by_family = {e: [r for r in runs if r.experiment == e] for e in families}
    sections = [build_section(e, by_family[e]) for e in families]
    headlines = [(section, build_headline(e, by_family[e])) for e, section in zip(families, sections)]
    cards = [(e, [run_card(r, _card_metrics(r)) for r in by_family[e]]) for e in families]
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    generated = generated or datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return render_page(Page(str(store.root), generated, sections, cards, counts, headlines))


def write_report(store_root: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Write the report (default `<store>/report.html`) and return its path."""
    path = Path(out) if out is not None else Store(store_root).root / "report.html"
    if path.is_dir():
        raise BadInput(f"--out {path}: is a directory (expected a file name such as report.html)")
    text = build_report(store_root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise BadInput(f"--out {path}: cannot write ({error.strerror or type(error).__name__})") from None
    return path


def _card_metrics(run: StoredRun) -> tuple[str, ...]:
    family = FAMILIES.get(run.experiment)
    return family.card_metrics if family else ()


__all__ = ["build_report", "write_report"]
