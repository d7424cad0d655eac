"""Read what the report needs from a store: the run objects, and each run's files.

The report reads only the store. A file that is missing or unreadable becomes a visible note on the
page, never an exception: a half-written store should still give a report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petridish.errors import BadInput
from petridish.store import SAMPLES, Store, read_samples


@dataclass(frozen=True)
class StoredRun:
    """One run as the store's public object, plus what its directory holds."""

    record: dict[str, Any]
    """The object `petridish show RUN --json` prints: id, name, experiment, status, config, metrics, path."""
    sweep_point: dict[str, Any] = field(default_factory=dict)
    """The sweep values that made this run, {dotted key: value}."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """provenance.json: git commit, dirty flag, package versions, schema version."""
    records: list[dict[str, Any]] = field(default_factory=list)
    """metrics.jsonl: one record per logged event (training curves)."""
    problems: tuple[str, ...] = ()
    """Files that were missing or unreadable, for the page to say so."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    """samples.jsonl: the transcripts behind the rates ({evaluation, condition, prompt, response, label, ...})."""

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def experiment(self) -> str:
        return self.record["experiment"]

    @property
    def status(self) -> str:
        return self.record["status"]


def load_runs(root: str | Path | None) -> tuple[Store, list[StoredRun]]:
    """Every run in the store at `root` with its files; BadInput when `root` is not a store."""
    store = Store(root)
    if not store.root.is_dir():
        raise BadInput(f"--store {store.root}: no such directory (expected a petridish store)")
    if not (store.root / "index.sqlite").is_file():
        raise BadInput(f"--store {store.root}: not a petridish store (expected {store.root / 'index.sqlite'})")
    return store, [read_run(record) for record in store.list()]


def read_run(record: dict[str, Any]) -> StoredRun:
    path = Path(record["path"])
    problems: list[str] = []
    meta = _read_json(path / "config.json", problems) or {}
    provenance = _read_json(path / "provenance.json", problems) or {}
    records = _read_jsonl(path / "metrics.jsonl", problems)
    point = meta.get("sweep_point") if isinstance(meta, dict) else None
    try:
        samples, bad = read_samples(path)
    except (OSError, UnicodeDecodeError) as error:
        samples, bad = [], 0
        problems.append(f"{SAMPLES} is unreadable ({type(error).__name__})")
    if bad:
        problems.append(f"{SAMPLES}: {bad} unreadable line(s) skipped")
    return StoredRun(
        record,
        point if isinstance(point, dict) else {},
        provenance if isinstance(provenance, dict) else {},
        records,
        tuple(problems),
        samples,
    )


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        problems.append(f"{path.name} is missing")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(f"{path.name} is unreadable ({type(error).__name__})")
    return None


def _read_jsonl(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        problems.append(f"{path.name} is missing")
        return []
    except (OSError, UnicodeDecodeError) as error:
        problems.append(f"{path.name} is unreadable ({type(error).__name__})")
        return []
    records, bad = [], 0
    for line in filter(str.strip, lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a run killed mid-write leaves a torn last line
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    if bad:
        problems.append(f"{path.name}: {bad} unreadable line(s) skipped")
    return records
