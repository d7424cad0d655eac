"""The store: one directory per run and an SQLite index over them.

    <root>/runs/<id>/      config.json, provenance.json, metrics.jsonl, metrics.json, samples.jsonl, *.safetensors
    <root>/failed/<id>/    the same without metrics.json, plus status.json (the reason) and error.txt
    <root>/partial/        runs being built (or abandoned by a killed runner)
    <root>/damaged/        damaged runs set aside when they are redone: <id>.<tag>/ with reason.txt
    <root>/locks/<id>.lock a claim: held (flock) by the runner that is training the run
    <root>/index.sqlite    the index (WAL mode); rebuilt from the directories whenever they disagree
    <root>/journal.jsonl   one line per commit: {id, status, pid, time}, for audits

Guarantees (tested in tests/test_store.py, tests/test_store_damage.py and tests/test_reliability.py):

- A run is done exactly when `runs/<id>/metrics.json` is an object of numbers and `config.json` is
  whole. Its directory is built under `partial/`, synced to disk, then renamed into `runs/` in one
  step, so a reader never sees half a run and a SIGKILL at any point leaves either no run or a whole one.
- The index follows the directories: each row carries a fingerprint (sizes and mtimes) of the files it
  was read from, and a row whose fingerprint differs from the disk is read again. Readers that may
  write repair the index (`reconcile()`); readers that may not (a read-only store, another user's
  store, a full disk) open it read-only and read the directories where it is stale, missing or corrupt.
  A corrupt index is set aside (`index.sqlite.corrupt.<tag>`) and rebuilt by the next writer.
- A damaged run (a truncated or invalid `metrics.json`, one that is not an object, no `config.json`)
  is listed with status `damaged` and its reason, skipped by every other reader, and redone by `run`:
  its claim moves the damaged directory to `damaged/` first, so nothing in it is deleted.
- Two runners on one store never train the same run at once: a runner first takes the run's claim, an
  exclusive `flock` on `locks/<id>.lock`. The kernel drops the lock when its process dies, so a
  killed runner leaves no stale claim to recover by hand. A claim also clears that run's abandoned
  partial directories, which no live runner can own.
- A commit that cannot be written (a full disk) removes its partial directory and raises `StoreError`
  saying how many bytes the run needed; no half-written run is ever counted as done.
- Only the driver (the process that expands the sweep) writes here; workers return `RunOutput`s.
"""

from __future__ import annotations

import builtins  # Store.list shadows the builtin in the class body's annotations
import errno
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

from safetensors import SafetensorError
from safetensors.torch import save_file

from petridish.errors import BadInput, StoreError
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
    updated REAL NOT NULL,
    fingerprint TEXT
)
"""
COLUMNS = "id, experiment, name, status, config, metrics, error, updated, fingerprint"
SAMPLES = "samples.jsonl"
"""A run's transcripts: one JSON object per line with at least evaluation, condition, prompt, response, label."""
DAMAGED = "damaged"
"""The status of a run directory that is not whole: listed with its reason, skipped by readers, redone by `run`."""


@dataclass
class RunOutput:
    """Everything a run produced, handed from the executor to the driver."""

    metrics: dict[str, float] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    weights: dict[str, dict] = field(default_factory=dict)
    """{file stem: state dict}."""
    samples: list[dict] = field(default_factory=list)
    """Transcripts behind the rates: {evaluation, condition, prompt, response, label, ...} per row (samples.jsonl)."""
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


@dataclass(frozen=True)
class OnDisk:
    """A run directory as a listing of the store sees it, before any file is read."""

    kind: str
    """`done` (under runs/) or `failed` (under failed/)."""
    path: Path
    fingerprint: str
    """Sizes and mtimes of the files the index row was read from: a change means read it again."""


class Store:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.runs_dir, self.partial_dir = self.root / "runs", self.root / "partial"
        self.failed_dir, self.locks_dir = self.root / "failed", self.root / "locks"
        self.damaged_dir = self.root / "damaged"
        self.index_path = self.root / "index.sqlite"

    # --- the root ------------------------------------------------------------------------------
    def check_root(self) -> None:
        """BadInput when the store's path is a file (or lies under one) instead of a directory."""
        for path in (self.root, *self.root.parents):
            if path.exists():
                if not path.is_dir():
                    where = "it" if path == self.root else str(path)
                    raise StoreError(f"--store {self.root}: {where} is a file (expected a store directory)")
                return

    def check_writable(self) -> None:
        """BadInput naming the store when this process cannot create and write its directories."""
        self.check_root()
        try:
            for path in (self.runs_dir, self.partial_dir, self.failed_dir, self.locks_dir):
                path.mkdir(parents=True, exist_ok=True)
            probe = self.partial_dir / f".probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise StoreError(
                f"--store {self.root}: cannot write there ({_reason(error)}); expected a directory this user may write "
                "(reading it works: petridish ls/show/report)"
            ) from None

    # --- claims --------------------------------------------------------------------------------
    def claim(self, run_id: str) -> Claim | None:
        """Take the run's claim, or None when another live runner (or this one) holds it."""
        try:
            self.locks_dir.mkdir(parents=True, exist_ok=True)
            fd = self._lock(self.locks_dir / f"{run_id}.lock")
        except OSError as error:
            raise StoreError(f"--store {self.root}: cannot take the claim of run {run_id} ({_reason(error)})") from None
        if fd is None:
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a human looking at the store
        self._clear_abandoned(run_id)
        self._set_aside_damaged(run_id)
        return Claim(self.locks_dir / f"{run_id}.lock", fd)

    @staticmethod
    def _lock(path: Path) -> int | None:
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
                return fd
            os.close(fd)  # the holder released and unlinked it between our open and our lock: retry

    def _clear_abandoned(self, run_id: str) -> None:
        """Partial and stale directories of a run whose claim we hold belong to no live runner."""
        for parent, pattern in (
            (self.partial_dir, f"{run_id}.*"),
            (self.runs_dir, f".stale.{run_id}.*"),
            (self.failed_dir, f".stale.{run_id}.*"),
        ):
            if parent.is_dir():
                for path in parent.glob(pattern):
                    shutil.rmtree(path, ignore_errors=True)

    def _set_aside_damaged(self, run_id: str) -> None:
        """Move a damaged `runs/<id>` (about to be redone) to `damaged/`, with the reason beside it."""
        path = self.runs_dir / run_id
        if not path.is_dir():
            return
        reason = read_run(run_id, OnDisk("done", path, ""))[-1]
        if reason is None:
            return  # whole after all: the driver sees it done and releases the claim
        self.damaged_dir.mkdir(exist_ok=True)
        target = self.damaged_dir / f"{run_id}.{uuid.uuid4().hex[:8]}"
        os.replace(path, target)
        (target / "reason.txt").write_text(f"{reason}\n")

    # --- writing (driver only) -----------------------------------------------------------------
    def _connect(self, read_only: bool = False) -> sqlite3.Connection:
        if read_only:
            return _connect_read_only(self.index_path)
        for path in (self.runs_dir, self.partial_dir):
            path.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.index_path, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "PRAGMA synchronous=NORMAL"
            )  # WAL + NORMAL survives a killed process; the dirs are the truth anyway
            db.execute(SCHEMA)
            if "fingerprint" not in {row[1] for row in db.execute("PRAGMA table_info(runs)")}:
                db.execute("ALTER TABLE runs ADD COLUMN fingerprint TEXT")  # an index written before fingerprints
        except BaseException:
            db.close()
            raise
        return db

    def is_done(self, run_id: str) -> bool:
        """True when the run is whole: valid metrics.json and config.json (a damaged run is redone)."""
        path = self.runs_dir / run_id
        return (path / "metrics.json").is_file() and read_run(run_id, OnDisk("done", path, ""))[-1] is None

    def metrics(self, run_id: str) -> dict[str, float]:
        """The metrics of a done run."""
        return json.loads((self.runs_dir / run_id / "metrics.json").read_text())

    def new_partial(self, run_id: str) -> Path:
        """A fresh private directory to build a run in."""
        path = self.partial_dir / f"{run_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir(parents=True)
        except OSError as error:
            raise StoreError(f"--store {self.root}: cannot create {path} ({_reason(error)})") from None
        return path

    def commit(self, spec, config: dict, output: RunOutput, partial: Path | None = None) -> str:
        """Write a finished or failed run; returns its status. A done run appears atomically.

        A write that fails (a full disk) removes the partial directory and raises StoreError."""
        partial = partial or self.new_partial(spec.id)
        status = "failed" if output.error else "done"
        try:
            self._write_run(partial, spec, config, output)
            _sync_tree(partial)
            final = (self.failed_dir if output.error else self.runs_dir) / spec.id
            _replace_dir(partial, final)
        except (OSError, SafetensorError) as error:
            shutil.rmtree(partial, ignore_errors=True)
            raise StoreError(self._write_failure(spec.id, output, error)) from None
        if status == "done":
            shutil.rmtree(self.failed_dir / spec.id, ignore_errors=True)  # an older failure of a redone run
        self._journal(spec.id, status)
        self._index_run(spec.id, OnDisk(status, final, _fingerprint(status, final)))
        return status

    def _write_run(self, partial: Path, spec, config: dict, output: RunOutput) -> None:
        _write_json(
            partial / "config.json",
            {"experiment": spec.experiment, "name": spec.name, "config": config, "sweep_point": spec.point},
        )
        ensemble = {"ensemble": output.ensemble} if output.ensemble else {}
        _write_json(partial / "provenance.json", {**provenance(), "torch_threads": output.torch_threads, **ensemble})
        if not (partial / "metrics.jsonl").exists():
            (partial / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in output.records))
        if output.samples:
            (partial / SAMPLES).write_text("".join(json.dumps(r) + "\n" for r in output.samples))
        for stem, state in output.weights.items():
            save_file({k: v.contiguous() for k, v in state.items()}, str(partial / f"{stem}.safetensors"))
        if output.error:
            (partial / "error.txt").write_text((output.traceback or output.error) + "\n")
            _write_json(partial / "status.json", {"status": "failed", "error": output.error})
        else:
            _write_json(partial / "metrics.json", output.metrics)

    def _write_failure(self, run_id: str, output: RunOutput, error: Exception) -> str:
        """One line: where, why, and how much space the run needed (its partial directory is gone)."""
        needed = sum(t.numel() * t.element_size() for state in output.weights.values() for t in state.values())
        needed += (
            len(json.dumps(output.records))
            + len(json.dumps(output.metrics))
            + len(json.dumps(output.samples))
            + 64 * 1024
        )  # config, provenance
        try:
            free = f", {_size(shutil.disk_usage(self.root).free)} free"
        except OSError:
            free = ""
        full = (
            isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error)
        )
        why = "no space left on device" if full else _reason(error)
        return (
            f"--store {self.root}: cannot write run {run_id} ({why}); it needs about {_size(needed)}{free}; "
            "its partial directory was removed and no finished run was lost: free space and run the same command again"
        )

    def _journal(self, run_id: str, status: str) -> None:
        line = json.dumps({"id": run_id, "status": status, "pid": os.getpid(), "time": time.time()}) + "\n"
        try:
            fd = os.open(self.root / "journal.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            return  # the journal is an audit trail; the run directory is already in place
        try:
            os.write(fd, line.encode())  # one O_APPEND write: lines from two runners never interleave
        except OSError:
            pass
        finally:
            os.close(fd)

    def _index_run(self, run_id: str, disk: OnDisk) -> None:
        """Index one committed run; a failure here loses nothing (the next reader reads the directory)."""
        try:
            self._with_index(lambda db: _upsert(db, run_id, disk))
        except (sqlite3.Error, OSError):
            pass

    def _with_index(self, action):
        """`action(db)` in a transaction on the index; a corrupt index is set aside and rebuilt once."""
        for attempt in range(2):
            try:
                with closing(self._connect()) as db, db:
                    return action(db)
            except sqlite3.DatabaseError as error:
                if attempt or not _is_corrupt(error):
                    raise
                self._set_aside_index()
                self._with_index(lambda db: self._reconcile(db, self._on_disk()))

    def _set_aside_index(self) -> None:
        tag = f"{time.strftime('%Y%m%d-%H%M%S')}.{uuid.uuid4().hex[:6]}"
        for suffix in ("", "-wal", "-shm"):
            path = self.root / f"index.sqlite{suffix}"
            if path.exists():
                os.replace(path, self.root / f"index.sqlite{suffix}.corrupt.{tag}")

    def reconcile(self) -> None:
        """Bring the index in line with the run directories (after a crash between rename and index)."""
        self.check_root()
        if not self.root.is_dir():
            return
        self._with_index(lambda db: self._reconcile(db, self._on_disk()))

    def _reconcile(self, db, on_disk: dict[str, OnDisk]) -> None:
        indexed = dict(db.execute("SELECT id, fingerprint FROM runs").fetchall())
        for run_id, disk in on_disk.items():
            if indexed.get(run_id) != disk.fingerprint:
                _upsert(db, run_id, disk)
        db.executemany("DELETE FROM runs WHERE id = ?", [(run_id,) for run_id in indexed if run_id not in on_disk])

    def _on_disk(self) -> dict[str, OnDisk]:
        """{id: OnDisk} of every run directory; a run under runs/ wins over a failed one."""
        found: dict[str, OnDisk] = {}
        for kind, parent in (("failed", self.failed_dir), ("done", self.runs_dir)):
            try:
                children = [p for p in parent.iterdir() if not p.name.startswith(".") and p.is_dir()]
            except OSError:  # no such directory yet, or one this user may not list
                continue
            for path in children:
                found[path.name] = OnDisk(kind, path, _fingerprint(kind, path))
        return found

    # --- reading -------------------------------------------------------------------------------
    def list(self, damaged: bool = False) -> list[dict[str, Any]]:
        """Every run as the public contract's object; damaged runs only when `damaged` is True.

        Reads the index when it agrees with the directories, the directories where it does not (or
        cannot be opened), and repairs the index when this process may write it."""
        self.check_root()
        if not self.root.is_dir():
            return []
        on_disk = self._on_disk()
        rows = None
        if self._may_write():
            try:
                rows = self._with_index(lambda db: self._reconciled_rows(db, on_disk))
            except (sqlite3.Error, OSError):
                rows = None  # a read-only file system, another user's index, a full disk: read without writing
        if rows is None:
            rows = self._read_without_writing(on_disk)
        records = [self._record(row) for row in rows]
        return records if damaged else [r for r in records if r["status"] != DAMAGED]

    def _reconciled_rows(self, db, on_disk: dict[str, OnDisk]) -> builtins.list[tuple]:
        self._reconcile(db, on_disk)
        return _select(db)

    def damaged(self) -> builtins.list[dict[str, Any]]:
        """The damaged runs, each with its reason under `error`."""
        return [r for r in self.list(damaged=True) if r["status"] == DAMAGED]

    def _may_write(self) -> bool:
        return os.access(self.root, os.W_OK) and (not self.index_path.exists() or os.access(self.index_path, os.W_OK))

    def _read_without_writing(self, on_disk: dict[str, OnDisk]) -> builtins.list[tuple]:
        """The index's rows where their fingerprints match the disk, the directories elsewhere."""
        indexed: dict[str, tuple] = {}
        if self.index_path.is_file():
            try:
                with closing(self._connect(read_only=True)) as db:
                    indexed = {row[0]: row for row in _select(db)}
            except sqlite3.Error:
                indexed = {}  # corrupt or unopenable: the directories are the truth
        rows = []
        for run_id, disk in on_disk.items():
            row = indexed.get(run_id)
            rows.append(
                row
                if row is not None and row[-1] == disk.fingerprint
                else (*read_run(run_id, disk)[:-1], _committed_at(disk), disk.fingerprint)
            )
        return sorted(rows, key=lambda row: (row[7], row[0]))

    def _record(self, row) -> dict[str, Any]:
        run_id, experiment, name, status, config, metrics, error, *_ = row
        record = {
            "id": run_id,
            "name": name,
            "experiment": experiment,
            "status": status,
            "config": json.loads(config),
            "metrics": json.loads(metrics),
        }
        if error:
            record["error"] = error
        record["path"] = str((self.failed_dir if status == "failed" else self.runs_dir) / run_id)
        return record

    def get(self, key: str) -> dict[str, Any]:
        """A run by id, unique id prefix or exact name; BadInput when there is none or several, or it is damaged."""
        runs = self.list(damaged=True)
        matches = (
            [r for r in runs if r["id"] == key]
            or [r for r in runs if r["name"] == key]
            or [r for r in runs if r["id"].startswith(key)]
        )
        if not matches:
            raise BadInput(f"RUN {key!r}: no such run in store {self.root}")
        if len(matches) > 1:
            raise BadInput(f"RUN {key!r}: matches {len(matches)} runs; give more of the id")
        if matches[0]["status"] == DAMAGED:
            raise BadInput(
                f"RUN {key!r}: run {matches[0]['id']} is damaged ({matches[0]['error']}); run its recipe again to redo it"
            )
        return matches[0]

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def journal(self) -> builtins.list[dict]:
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


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """The index opened without writing a byte: read-only, else immutable (a read-only directory
    cannot hold the WAL's shared-memory file)."""
    errors = []
    for mode in ("mode=ro", "immutable=1"):
        db = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=5)
        try:
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            if "fingerprint" not in columns:
                raise sqlite3.DatabaseError("index.sqlite has no fingerprints (written by an older petridish)")
            return db
        except sqlite3.Error as error:
            db.close()
            errors.append(error)
    raise errors[-1]


def _select(db) -> list[tuple]:
    return db.execute(f"SELECT {COLUMNS} FROM runs ORDER BY updated, id").fetchall()


def _upsert(db, run_id: str, disk: OnDisk) -> None:
    db.execute(
        f"INSERT OR REPLACE INTO runs ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*read_run(run_id, disk)[:-1], _committed_at(disk), disk.fingerprint),
    )


def _committed_at(disk: OnDisk) -> float:
    """When a run was committed (its marker file's mtime): the index lists runs in this order."""
    for path in (disk.path / ("metrics.json" if disk.kind == "done" else "status.json"), disk.path):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return time.time()


def _is_corrupt(error: sqlite3.DatabaseError) -> bool:
    """Not a database, or a malformed one (as opposed to locked, read-only or out of space)."""
    name = getattr(error, "sqlite_errorname", "")
    return name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or type(error) is sqlite3.DatabaseError


def _fingerprint(kind: str, path: Path) -> str:
    """`kind:size.mtime:size.mtime` of the files a run's index row is read from ('-' for a missing one)."""
    marker = "metrics.json" if kind == "done" else "status.json"
    parts = [kind]
    for name in (marker, "config.json"):
        try:
            stat = os.stat(path / name)
            parts.append(f"{stat.st_size}.{stat.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return ":".join(parts)


def load_run_weights(root: str | Path | None, experiment: str, config, model, name: str = "weights") -> None:
    """Read `<name>.safetensors` of the done run (`experiment`, `config`) in the store at `root` into
    `model`: how a run reads a run it requires (a stored base organism). `config` may instead be the
    run's id. Reads only."""
    # Imported here: models import scenarios and torch, which only runs that read weights need.
    from petridish.models import load_weights
    from petridish.sweep import run_id as id_of

    store = Store(root)
    rid = config if isinstance(config, str) else id_of(experiment, config)
    if root is None or not store.is_done(rid):
        raise BadInput(
            f"--store {store.root}: required {experiment} run {rid} is not done there (run its recipe first)"
        )
    load_weights(model, store.runs_dir / rid / f"{name}.safetensors")


def read_run(run_id: str, disk: OnDisk) -> tuple:
    """(id, experiment, name, status, config JSON, metrics JSON, error, damage) from a run's directory.

    `damage` is None for a whole run; otherwise the reason, and the status is `damaged`."""
    meta, damage = _read_object(disk.path / "config.json")
    if damage is None and not (
        isinstance(meta.get("experiment"), str)
        and isinstance(meta.get("name"), str)
        and isinstance(meta.get("config"), dict)
    ):
        damage = "config.json is not a run's config (expected experiment, name and config)"
    marker = "metrics.json" if disk.kind == "done" else "status.json"
    body, marker_damage = _read_object(disk.path / marker)
    damage = damage or marker_damage
    if damage is None and disk.kind == "done":
        bad = [k for k, v in body.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        damage = f"metrics.json: {bad[0]!r} is not a number" if bad else None
    if damage is None and disk.kind == "failed" and not isinstance(body.get("error"), str):
        damage = "status.json has no error (expected a failed run's reason)"
    experiment = meta.get("experiment") if isinstance(meta.get("experiment"), str) else "?"
    name = meta.get("name") if isinstance(meta.get("name"), str) else run_id
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    if damage is not None:
        return (run_id, experiment, name, DAMAGED, json.dumps(config), "{}", damage, damage)
    metrics, error = (body, None) if disk.kind == "done" else ({}, body["error"])
    return (run_id, experiment, name, disk.kind, json.dumps(config), json.dumps(metrics), error, None)


def read_samples(run_path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """A run's transcripts from its samples.jsonl, and how many lines were unreadable (a torn last line);
    ([], 0) when the run stored none."""
    try:
        lines = (Path(run_path) / SAMPLES).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return [], 0
    rows, bad = [], 0
    for line in filter(str.strip, lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def _read_object(path: Path) -> tuple[dict, str | None]:
    """(the JSON object in `path`, None) or ({}, why it is not one)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}, f"{path.name} is missing"
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return {}, f"{path.name} is not valid JSON (truncated or overwritten)"
    except OSError as error:
        return {}, f"{path.name} cannot be read ({_reason(error)})"
    if not isinstance(data, dict):
        return {}, f"{path.name} holds a JSON {type(data).__name__}, expected an object"
    return data, None


def _reason(error: BaseException) -> str:
    """The OS's words for an error (`No space left on device`), else its first line, else its type."""
    text = getattr(error, "strerror", None) or str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


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
