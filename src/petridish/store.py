"""The store: one directory per run and an SQLite index over them.

    <root>/runs/<id>/      config.json, provenance.json, metrics.jsonl, metrics.json, *.safetensors
    <root>/failed/<id>/    the same without metrics.json, plus status.json (the reason) and error.txt
    <root>/partial/        runs being built (or abandoned by a killed runner)
    <root>/locks/<id>.lock a claim: held (flock) by the runner that is training the run
    <root>/index.sqlite    the index (WAL mode); rebuilt from the directories whenever they disagree
    <root>/journal.jsonl   one line per commit: {id, status, pid, time}, for audits

Guarantees (tested in tests/test_store.py and tests/test_reliability.py):

- A run is done exactly when `runs/<id>/metrics.json` exists. Its directory is built under
  `partial/`, synced to disk, then renamed into `runs/` in one step, so a reader never sees half a run
  and a SIGKILL at any point leaves either no run or a whole one.
- The index follows the directories: a crash between the rename and the index write is repaired by
  `reconcile()` (called by every reader and at the start of every sweep).
- Two runners on one store never train the same run at once: a runner first takes the run's claim, an
  exclusive `flock` on `locks/<id>.lock`. The kernel drops the lock when its process dies, so a
  killed runner leaves no stale claim to recover by hand. A claim also clears that run's abandoned
  partial directories, which no live runner can own.
- Only the driver (the process that expands the sweep) writes here; workers return `RunOutput`s.
"""

from __future__ import annotations

import fcntl
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
    torch_threads: int | None = None
    """Intra-op threads the run used: results are bit-identical only at equal thread counts."""
    ensemble: dict | None = None
    """{"members": K, "group": [run ids]} when the run was trained together with others (provenance)."""


def default_root() -> Path:
    return Path(os.environ.get("PETRIDISH_STORE") or DEFAULT_STORE)


class Claim:
    """An exclusive claim on one run id, held until `release()` (or the death of this process)."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd < 0:
            return
        # Unlink while still holding the lock: a runner that opened the old file notices (inode check).
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Store:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.runs_dir, self.partial_dir = self.root / "runs", self.root / "partial"
        self.failed_dir, self.locks_dir = self.root / "failed", self.root / "locks"

    # --- claims --------------------------------------------------------------------------------
    def claim(self, run_id: str) -> Claim | None:
        """Take the run's claim, or None when another live runner (or this one) holds it."""
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        path = self.locks_dir / f"{run_id}.lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)  # the holder released and unlinked it between our open and our lock: retry
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a human looking at the store
        self._clear_abandoned(run_id)
        return Claim(path, fd)

    def _clear_abandoned(self, run_id: str) -> None:
        """Partial and stale directories of a run whose claim we hold belong to no live runner."""
        for parent, pattern in ((self.partial_dir, f"{run_id}.*"), (self.runs_dir, f".stale.{run_id}.*"), (self.failed_dir, f".stale.{run_id}.*")):
            if parent.is_dir():
                for path in parent.glob(pattern):
                    shutil.rmtree(path, ignore_errors=True)

    # --- writing (driver only) -----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        for path in (self.runs_dir, self.partial_dir):
            path.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.root / "index.sqlite", timeout=60)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process; the dirs are the truth anyway
        db.execute(SCHEMA)
        return db

    def is_done(self, run_id: str) -> bool:
        return (self.runs_dir / run_id / "metrics.json").is_file()

    def metrics(self, run_id: str) -> dict[str, float]:
        """The metrics of a done run."""
        return json.loads((self.runs_dir / run_id / "metrics.json").read_text())

    def new_partial(self, run_id: str) -> Path:
        """A fresh private directory to build a run in."""
        path = self.partial_dir / f"{run_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def commit(self, spec, config: dict, output: RunOutput, partial: Path | None = None) -> str:
        """Write a finished or failed run; returns its status. A done run appears atomically."""
        partial = partial or self.new_partial(spec.id)
        _write_json(partial / "config.json", {"experiment": spec.experiment, "name": spec.name, "config": config, "sweep_point": spec.point})
        ensemble = {"ensemble": output.ensemble} if output.ensemble else {}
        _write_json(partial / "provenance.json", {**provenance(), "torch_threads": output.torch_threads, **ensemble})
        if not (partial / "metrics.jsonl").exists():
            (partial / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in output.records))
        for stem, state in output.weights.items():
            save_file({k: v.contiguous() for k, v in state.items()}, str(partial / f"{stem}.safetensors"))
        status = "failed" if output.error else "done"
        if output.error:
            (partial / "error.txt").write_text((output.traceback or output.error) + "\n")
            _write_json(partial / "status.json", {"status": "failed", "error": output.error})
            final = self.failed_dir / spec.id
        else:
            _write_json(partial / "metrics.json", output.metrics)
            final = self.runs_dir / spec.id
        _sync_tree(partial)
        _replace_dir(partial, final)
        if status == "done":
            shutil.rmtree(self.failed_dir / spec.id, ignore_errors=True)  # an older failure of a redone run
        self._journal(spec.id, status)
        self._index(spec.id, spec.experiment, spec.name, status, config, output.metrics, output.error)
        return status

    def _journal(self, run_id: str, status: str) -> None:
        line = json.dumps({"id": run_id, "status": status, "pid": os.getpid(), "time": time.time()}) + "\n"
        fd = os.open(self.root / "journal.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one O_APPEND write: lines from two runners never interleave
        finally:
            os.close(fd)

    def _index(self, run_id, experiment, name, status, config: dict, metrics: dict, error: str | None) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (run_id, experiment, name, status, json.dumps(config), json.dumps(metrics), error, time.time()))

    def reconcile(self) -> None:
        """Bring the index in line with the run directories (after a crash between rename and index)."""
        if not self.root.is_dir():
            return
        with closing(self._connect()) as db, db:
            indexed = dict(db.execute("SELECT id, status FROM runs").fetchall())
            on_disk = self._directories()
            for run_id, (status, path) in on_disk.items():
                if indexed.get(run_id) != status:
                    self._index_directory(db, run_id, status, path)
            gone = [(run_id,) for run_id in indexed if run_id not in on_disk]
            db.executemany("DELETE FROM runs WHERE id = ?", gone)

    def _directories(self) -> dict[str, tuple[str, Path]]:
        """{id: (status, directory)} of every whole run on disk; a done run wins over a failed one."""
        found: dict[str, tuple[str, Path]] = {}
        for status, parent, marker in (("failed", self.failed_dir, "status.json"), ("done", self.runs_dir, "metrics.json")):
            if parent.is_dir():
                for path in parent.iterdir():
                    if not path.name.startswith(".") and (path / marker).is_file():
                        found[path.name] = (status, path)
        return found

    def _index_directory(self, db, run_id: str, status: str, path: Path) -> None:
        meta = json.loads((path / "config.json").read_text())
        metrics = json.loads((path / "metrics.json").read_text()) if status == "done" else {}
        error = json.loads((path / "status.json").read_text()).get("error") if status == "failed" else None
        db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (run_id, meta["experiment"], meta["name"], status, json.dumps(meta["config"]), json.dumps(metrics), error, time.time()))

    # --- reading -------------------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        """Every indexed run as the public contract's object."""
        if not (self.root / "index.sqlite").exists() and not self.runs_dir.is_dir():
            return []
        self.reconcile()  # also rebuilds a lost index from the run directories
        with closing(self._connect()) as db:
            rows = db.execute("SELECT id, experiment, name, status, config, metrics, error, updated FROM runs ORDER BY updated, id").fetchall()
        return [self._record(row) for row in rows]

    def _record(self, row) -> dict[str, Any]:
        run_id, experiment, name, status, config, metrics, error, updated = row
        record = {"id": run_id, "name": name, "experiment": experiment, "status": status, "config": json.loads(config), "metrics": json.loads(metrics)}
        if error:
            record["error"] = error
        record["path"] = str((self.runs_dir if status == "done" else self.failed_dir) / run_id)
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

    def journal(self) -> list[dict]:
        """Every commit so far, oldest first (a line cut short by a kill is skipped)."""
        path = self.root / "journal.jsonl"
        if not path.is_file():
            return []
        entries = []
        for line in path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return entries


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _sync_tree(path: Path) -> None:
    """fsync a run directory's files and the directory, so the rename publishes data that is on disk."""
    for child in path.iterdir():
        fd = os.open(child, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _sync_dir(path)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    _sync_dir(target.parent)
