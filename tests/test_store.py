"""The store's guarantees, without training: claims, atomic commits, an index that follows the
directories, and the journal. (Kills and concurrent runners: tests/test_reliability.py.)"""

import json
import sqlite3
import subprocess
import sys

import pytest
import torch

from petridish.experiments.persistence import PersistenceConfig
from petridish.store import RunOutput, Store
from petridish.sweep import RunSpec


def spec(run_id: str = "aaaa00000001", name: str = "probe") -> RunSpec:
    return RunSpec(run_id, "persistence", name, PersistenceConfig(seed=int(run_id[-1], 16)), {"seed": 1})


def output(value: float = 0.5, error: str | None = None) -> RunOutput:
    if error:
        return RunOutput(
            records=[{"step": 1, "loss": float("nan")}],
            error=error,
            traceback=f"Traceback (most recent call last):\n{error}",
        )
    return RunOutput(
        metrics={"rate": value, "rate.n": 10},
        records=[{"step": 1, "loss": 1.0}],
        weights={"weights": {"w": torch.ones(2)}},
        torch_threads=1,
    )


def commit(store: Store, s: RunSpec, out: RunOutput) -> str:
    return store.commit(s, {"seed": s.config.seed}, out)


def test_claim_is_exclusive_until_released(tmp_path):
    store = Store(tmp_path)
    first = store.claim("run1")
    assert first is not None
    assert store.claim("run1") is None  # even from this process: flock is per open file
    assert store.claim("run2") is not None
    first.release()
    again = store.claim("run1")
    assert again is not None
    again.release()


HOLDER = """
import sys, time
from petridish.store import Store
store = Store(sys.argv[1])
claim = store.claim("run1")
(store.partial_dir / "run1.999.abandoned").mkdir(parents=True)
print("held" if claim else "refused", flush=True)
time.sleep(60)
"""


def test_claim_of_a_killed_runner_is_free_and_its_partial_run_cleared(tmp_path):
    store = Store(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert store.claim("run1") is None  # a live runner holds it
        assert (store.partial_dir / "run1.999.abandoned").is_dir()
    finally:
        holder.kill()
        holder.wait()
    claim = store.claim("run1")  # the kernel dropped the dead runner's lock: no stale claim
    assert claim is not None
    assert not (store.partial_dir / "run1.999.abandoned").exists()
    claim.release()


def test_commit_is_whole_and_index_matches(tmp_path):
    store = Store(tmp_path)
    assert commit(store, spec(), output()) == "done"
    run_dir = store.run_dir("aaaa00000001")
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json",
        "metrics.json",
        "metrics.jsonl",
        "provenance.json",
        "weights.safetensors",
    ]
    assert json.loads((run_dir / "provenance.json").read_text())["torch_threads"] == 1
    assert list(store.partial_dir.iterdir()) == []
    [record] = store.list()
    assert record["status"] == "done" and record["metrics"] == {"rate": 0.5, "rate.n": 10}
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_half_built_run_is_not_done(tmp_path):
    store = Store(tmp_path)
    partial = store.new_partial("aaaa00000001")
    (partial / "metrics.json").write_text("{}")  # a killed runner got this far under partial/
    assert not store.is_done("aaaa00000001")
    assert store.list() == []


def test_index_rebuilt_after_a_crash_between_rename_and_index(tmp_path, monkeypatch):
    store = Store(tmp_path)
    commit(store, spec("aaaa00000001", "kept"), output(0.25))

    def killed(*args, **kwargs):
        raise SystemExit("killed between the rename and the index write")

    monkeypatch.setattr(Store, "_index_run", killed)
    with pytest.raises(SystemExit):
        commit(store, spec("aaaa00000002", "orphan"), output(0.75))
    with pytest.raises(SystemExit):
        commit(store, spec("aaaa00000003", "broken"), output(error="ValueError: boom"))
    monkeypatch.undo()
    records = {r["name"]: r for r in store.list()}
    assert records["orphan"]["status"] == "done" and records["orphan"]["metrics"]["rate"] == 0.75
    assert records["broken"]["status"] == "failed" and records["broken"]["error"] == "ValueError: boom"
    assert records["kept"]["metrics"]["rate"] == 0.25


def test_index_rebuilt_from_scratch_and_rows_without_directories_dropped(tmp_path):
    store = Store(tmp_path)
    for i in range(1, 4):
        commit(store, spec(f"aaaa0000000{i}"), output(i / 10))
    for path in tmp_path.glob("index.sqlite*"):
        path.unlink()
    (store.runs_dir / "aaaa00000003" / "metrics.json").unlink()  # no longer a whole run
    assert {r["id"]: r["metrics"]["rate"] for r in store.list()} == {"aaaa00000001": 0.1, "aaaa00000002": 0.2}


def test_failed_run_keeps_reason_and_traceback_and_a_redo_replaces_it(tmp_path):
    store = Store(tmp_path)
    assert commit(store, spec(), output(error="insert: loss became nan at step 3")) == "failed"
    failed_dir = store.failed_dir / "aaaa00000001"
    assert "Traceback" in (failed_dir / "error.txt").read_text()
    assert (
        store.get("probe")["status"] == "failed" and store.get("probe")["error"] == "insert: loss became nan at step 3"
    )
    assert not store.is_done("aaaa00000001")
    assert commit(store, spec(), output(0.5)) == "done"
    assert not failed_dir.exists() and store.get("probe")["status"] == "done"
    assert [(e["id"], e["status"]) for e in store.journal()] == [("aaaa00000001", "failed"), ("aaaa00000001", "done")]


def test_journal_skips_a_line_cut_short(tmp_path):
    store = Store(tmp_path)
    commit(store, spec(), output())
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write('{"id": "aaaa0000')  # a kill in the middle of a write
    assert [e["status"] for e in store.journal()] == ["done"]
