"""Every field of every config dataclass is read by code outside its own class.

A field that only its class's `__post_init__` mentions configures nothing: a recipe could set it and change
the run's id and no result. The check reads the source (no run needed): a field counts as read where an
attribute of that name is taken, or a string names it (`getattr`, a dotted metric or config key), anywhere
in `src/petridish` outside the class. Names shared by several configs (`steps`, `lr`) can hide an unread
one; fields read only in some settings are handled at run time (`config.read_only_if`, and
`sweep.iter_specs` refuses a recipe key that no run reads)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "petridish"


def unread_fields(sources: dict[str, str]) -> list[str]:
    """`Class.field` for every field of a `*Config` class that no code outside the class reads."""
    trees = {name: ast.parse(text) for name, text in sources.items()}
    mentions: list[tuple[str, int, str]] = []  # (file, line, name) of every attribute or string
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                mentions.append((name, node.lineno, node.attr))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                mentions.append((name, node.lineno, node.value.rsplit(".", 1)[-1]))
    unread = []
    for name, tree in trees.items():
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name.endswith("Config")):
            end = cls.end_lineno or cls.lineno
            own = lambda file, line: file == name and cls.lineno <= line <= end  # noqa: E731
            for stmt in cls.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    field = stmt.target.id
                    if not any(m == field and not own(f, line) for f, line, m in mentions):
                        unread.append(f"{cls.name}.{field}")
    return unread


def package_sources() -> dict[str, str]:
    return {str(p.relative_to(SRC)): p.read_text() for p in sorted(SRC.rglob("*.py"))}


def test_every_config_field_is_read_outside_its_class():
    assert unread_fields(package_sources()) == []


def test_the_check_finds_a_field_nothing_reads():
    sources = package_sources()
    sources["toy.py"] = (
        "from dataclasses import dataclass\n\n"
        "@dataclass(frozen=True)\n"
        "class ToyConfig:\n"
        "    read_one: int = 1\n"
        "    never_read_anywhere: int = 2\n\n"
        "    def __post_init__(self):\n"
        "        assert self.never_read_anywhere >= 0\n\n"
        "def use(config: ToyConfig) -> int:\n"
        "    return config.read_one\n"
    )
    assert unread_fields(sources) == ["ToyConfig.never_read_anywhere"]
