"""Section renderers, one per experiment family; importing a family's module registers it."""

from petridish.report.sections import detection, dual, persistence, selection  # noqa: F401  (each registers itself)
from petridish.report.sections.base import FAMILIES, ORDER, Family, build_headline, build_section, register

__all__ = ["FAMILIES", "ORDER", "Family", "build_headline", "build_section", "register"]
