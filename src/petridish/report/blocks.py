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
