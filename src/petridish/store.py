"""The store: one directory per run and an SQLite index over them.

    <root>/runs/<id>/config.json, provenance.json, metrics.jsonl, metrics.json, *.safetensors
    <root>/index.sqlite   (WAL mode)

A run directory is built under <root>/partial/ and renamed into runs/ only once its metrics are on
disk, so a run is done exactly when runs/<id>/metrics.json exists; the index is rebuilt from the
directories whenever they disagree. Only the driver writes here.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from petridish.errors import BadInput
from petridish.provenance import provenance

DEFAULT_STORE = "petridish-runs"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    error TEXT,
    updated REAL NOT NULL
)
"""


@dataclass
class RunOutput:
    """Everything a run produced, handed from the executor to the driver."""

    metrics: dict[str, float] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    weights: dict[str, dict] = field(default_factory=dict)
    """{file stem: state dict}."""
    error: str | None = None
    """A one-line reason when the run failed."""
    traceback: str | None = None


def default_root() -> Path:
    return Path(os.environ.get("PETRIDISH_STORE") or DEFAULT_STORE)


class Store:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.runs_dir, self.partial_dir = self.root / "runs", self.root / "partial"

    # --- writing (driver only) -----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.root / "index.sqlite", timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(SCHEMA)
        return db

    def is_done(self, run_id: str) -> bool:
        return (self.runs_dir / run_id / "metrics.json").is_file()

    def new_partial(self, run_id: str) -> Path:
        """A fresh private directory to build a run in."""
        path = self.partial_dir / f"{run_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def commit(self, spec, config: dict, output: RunOutput, partial: Path | None = None) -> str:
        """Write a finished or failed run; returns its status. A done run appears atomically."""
        partial = partial or self.new_partial(spec.id)
        _write_json(partial / "config.json", {"experiment": spec.experiment, "name": spec.name, "config": config, "sweep_point": spec.point})
        _write_json(partial / "provenance.json", provenance())
        if not (partial / "metrics.jsonl").exists():
            (partial / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in output.records))
        for stem, state in output.weights.items():
            save_file({k: v.contiguous() for k, v in state.items()}, str(partial / f"{stem}.safetensors"))
        status = "failed" if output.error else "done"
        if output.error:
            (partial / "error.txt").write_text((output.traceback or output.error) + "\n")
            final = self.root / "failed" / spec.id
        else:
            _write_json(partial / "metrics.json", output.metrics)
            final = self.runs_dir / spec.id
        _replace_dir(partial, final)
        self._index(spec, config, status, output)
        return status

    def _index(self, spec, config: dict, status: str, output: RunOutput) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (spec.id, spec.experiment, spec.name, status, json.dumps(config), json.dumps(output.metrics), output.error, time.time()),
            )

    def reconcile(self) -> None:
        """Bring the index in line with the run directories (after a crash between rename and index)."""
        if not self.runs_dir.is_dir():
            return
        with closing(self._connect()) as db, db:
            indexed = {row[0] for row in db.execute("SELECT id FROM runs WHERE status = 'done'")}
            for path in self.runs_dir.iterdir():
                if path.name not in indexed and (path / "metrics.json").is_file():
                    meta = json.loads((path / "config.json").read_text())
                    db.execute(
                        "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, 'done', ?, ?, NULL, ?)",
                        (path.name, meta["experiment"], meta["name"], json.dumps(meta["config"]), (path / "metrics.json").read_text(), time.time()),
                    )

    # --- reading -------------------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        """Every indexed run as the public contract's object."""
        if not (self.root / "index.sqlite").exists():
            return []
        self.reconcile()
        with closing(self._connect()) as db:
            rows = db.execute("SELECT id, experiment, name, status, config, metrics, error, updated FROM runs ORDER BY updated, id").fetchall()
        return [self._record(row) for row in rows]

    def _record(self, row) -> dict[str, Any]:
        run_id, experiment, name, status, config, metrics, error, updated = row
        record = {"id": run_id, "name": name, "experiment": experiment, "status": status, "config": json.loads(config), "metrics": json.loads(metrics)}
        if error:
            record["error"] = error
        record["path"] = str((self.runs_dir if status == "done" else self.root / "failed") / run_id)
        return record

    def get(self, key: str) -> dict[str, Any]:
        """A run by id, unique id prefix or exact name; BadInput when there is none or several."""
        runs = self.list()
        matches = [r for r in runs if r["id"] == key] or [r for r in runs if r["name"] == key] or [r for r in runs if r["id"].startswith(key)]
        if not matches:
            raise BadInput(f"RUN {key!r}: no such run in store {self.root}")
        if len(matches) > 1:
            raise BadInput(f"RUN {key!r}: matches {len(matches)} runs; give more of the id")
        return matches[0]

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _replace_dir(source: Path, target: Path) -> None:
    """Move a finished directory into place; an older copy (a redo of a failed run) is replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        stale = target.with_name(f".stale.{target.name}.{uuid.uuid4().hex[:8]}")
        os.replace(target, stale)
        os.replace(source, target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(source, target)
