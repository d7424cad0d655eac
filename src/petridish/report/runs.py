"""One card per run: its training curves, headline numbers, every metric, config and provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from petridish.config import flatten
from petridish.report.blocks import Table
from petridish.report.load import StoredRun
from petridish.report.numbers import Value, point_metrics, run_value
from petridish.report.plots import training_curves

PROVENANCE_KEYS = ("git_commit", "git_dirty", "schema_version", "python", "platform")
ROWS_PER_CONDITION = 16
CONDITIONS_PER_RUN = 16
SAMPLE_KEYS = ("evaluation", "condition", "prompt", "response", "label")


@dataclass(frozen=True)
class SampleGroup:
    """The transcripts of one evaluation and condition of a run, as text (the page escapes them)."""

    evaluation: str
    condition: str
    labels: str
    """How the group's stored rows are labelled, e.g. `defect 20, aligned 4`."""
    rows: list[tuple[str, str, str, str]]
    """(prompt, response, label, other fields) of the first ROWS_PER_CONDITION rows."""
    stored: int


@dataclass(frozen=True)
class RunCard:
    id: str
    name: str
    experiment: str
    status: str
    error: str | None
    curve: str | None
    """SVG data URI of the training curves, None when the run logged nothing numeric."""
    metrics: Table
    headline: list[tuple[str, Value | None]] = field(default_factory=list)
    sweep_point: list[tuple[str, str]] = field(default_factory=list)
    config: list[tuple[str, str]] = field(default_factory=list)
    provenance: list[tuple[str, str]] = field(default_factory=list)
    packages: list[tuple[str, str]] = field(default_factory=list)
    commit: str | None = None
    dirty: bool | None = None
    problems: tuple[str, ...] = ()
    samples: list[SampleGroup] = field(default_factory=list)
    samples_stored: int = 0


def sample_groups(rows: list[dict[str, Any]]) -> list[SampleGroup]:
    """Transcripts grouped by (evaluation, condition) in stored order, the first few of each."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((str(row.get("evaluation", "")), str(row.get("condition", ""))), []).append(row)
    out = []
    for (evaluation, condition), members in list(groups.items())[:CONDITIONS_PER_RUN]:
        counts: dict[str, int] = {}
        for row in members:
            counts[str(row.get("label"))] = counts.get(str(row.get("label")), 0) + 1
        shown = [
            (
                str(r.get("prompt", "")),
                str(r.get("response", "")),
                str(r.get("label", "")),
                ", ".join(f"{k}={_text(v)}" for k, v in r.items() if k not in SAMPLE_KEYS),
            )
            for r in members[:ROWS_PER_CONDITION]
        ]
        labels = ", ".join(f"{label} {n}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        out.append(SampleGroup(evaluation, condition, labels, shown, len(members)))
    return out


def run_card(run: StoredRun, headline: tuple[str, ...] = ()) -> RunCard:
    metrics = run.record.get("metrics", {})
    rows = [(name, run_value(metrics, name)) for name in point_metrics(metrics)]
    packages = run.provenance.get("packages")
    return RunCard(
        id=run.id,
        name=run.name,
        experiment=run.experiment,
        status=run.status,
        error=run.record.get("error"),
        curve=training_curves(run.records),
        metrics=Table(("metric", "value [95% CI] n"), rows),
        headline=[(name, run_value(metrics, name)) for name in headline if name in metrics],
        sweep_point=[(key, _text(value)) for key, value in run.sweep_point.items()],
        config=[(key, _text(value)) for key, value in flatten(run.record.get("config", {})).items()],
        provenance=[(key, _text(run.provenance[key])) for key in PROVENANCE_KEYS if key in run.provenance],
        packages=[(name, _text(version)) for name, version in sorted(packages.items())]
        if isinstance(packages, dict)
        else [],
        commit=_commit(run.provenance.get("git_commit")),
        dirty=run.provenance.get("git_dirty") if isinstance(run.provenance.get("git_dirty"), bool) else None,
        problems=run.problems,
        samples=sample_groups(run.samples),
        samples_stored=len(run.samples),
    )


def _text(value: Any) -> str:
    """A config or provenance value as the recipe would write it (strings bare, the rest as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def _commit(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
