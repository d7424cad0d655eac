"""What a section is made of. Renderers build these as plain data; only `html.py` turns them into
markup, through autoescaping templates, so no renderer can forget to escape a user's string."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Figure:
    uri: str
    """A `data:image/svg+xml;base64,...` URI: the plot travels inside the page."""
    caption: str
    alt: str
    kind: ClassVar[str] = "figure"


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    """Each cell is a string, a number, or a `numbers.Value` (shown with its interval and n)."""
    caption: str = ""
    group_first_column: bool = False
    """Blank a first-column cell that repeats the row above (long tables grouped by their first key)."""
    folded: bool = True
    """Fold it below the section's figures (a figure's key table stays beside its figure)."""
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class Note:
    text: str
    kind: ClassVar[str] = "note"


@dataclass(frozen=True)
class Section:
    anchor: str
    """The id of the section's heading (letters, digits and dashes only)."""
    title: str
    question: str = ""
    """What the family asks, in one line."""
    reference: str = ""
    """The published finding to read the numbers against."""
    blocks: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Headline:
    """A family's finding in one sentence, written from the numbers, for the card at the top of the page."""

    finding: str
    value: Any = None
    """The `numbers.Value` the sentence rests on (None: no number to show)."""
    measure: str = ""
    """What that number is, in a few words."""
    published: str = ""
    """The published figure to read it against ('' where none exists)."""
    status: str = "finding"
    """`finding`, `controls failed` (controls present and failed: not a finding) or `no finding`."""
    controls: str = ""
    """One line on the family's controls: which ran and how they came out."""


@dataclass(frozen=True)
class Control:
    """A configuration whose outcome is known by construction, and how it came out."""

    name: str
    expected: str
    observed: str
    passed: bool


def controls_line(controls: list[Control]) -> str:
    if not controls:
        return "No controls in the store for this family."
    passed = sum(c.passed for c in controls)
    groups: dict[tuple[str, str], list[Control]] = {}
    for c in controls:  # the same control at several sizes or seeds: one entry with every outcome
        groups.setdefault((c.name, c.expected), []).append(c)
    parts = []
    for (name, expected), members in groups.items():
        observed = ", ".join(c.observed + ("" if c.passed else " FAILED") for c in members[:6]) + (
            ", ..." if len(members) > 6 else ""
        )
        parts.append(f"{name}: {observed} (expected {expected})")
    return f"{passed} of {len(controls)} controls passed. " + "; ".join(parts) + "."


def headline_with_controls(finding: str, controls: list[Control], status: str = "finding", **fields) -> Headline:
    """A Headline whose status says 'controls failed: not a finding' when any control failed."""
    if any(not c.passed for c in controls):
        return Headline(
            "Controls failed: not a finding. " + finding,
            status="controls failed",
            controls=controls_line(controls),
            **fields,
        )
    return Headline(finding, status=status, controls=controls_line(controls), **fields)
