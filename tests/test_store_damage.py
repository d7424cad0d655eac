"""A store that stays readable: read-only and other users' stores, a corrupt index, damaged runs,
a disk that fills during a commit. Nothing trains here; runs are committed directly."""

import errno
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from petridish import store as store_module
from petridish.cli import main
from petridish.errors import StoreError
from petridish.experiments.persistence import PersistenceConfig
from petridish.store import RunOutput, Store
from petridish.sweep import RunSpec

IDS = ("aaaa00000001", "aaaa00000002", "aaaa00000003")


def spec(run_id: str) -> RunSpec:
    return RunSpec(
        run_id, "persistence", f"probe[{run_id[-1]}]", PersistenceConfig(seed=int(run_id[-1], 16)), {"seed": 1}
    )


def output(value: float = 0.5) -> RunOutput:
    return RunOutput(
        metrics={"rate": value, "rate.n": 10},
        records=[{"step": 1, "loss": 1.0}],
        weights={"weights": {"w": torch.ones(2)}},
        torch_threads=1,
    )


def filled(root: Path) -> Store:
    store = Store(root)
    for i, run_id in enumerate(IDS):
        store.commit(spec(run_id), {"seed": i}, output(i / 10))
    return store


def cli(*args: str, capsys) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *needles: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


# --- damaged runs --------------------------------------------------------------------------------

DAMAGE = {
    "truncated metrics.json": ("metrics.json", lambda text: text[: len(text) // 2], "metrics.json is not valid JSON"),
    "garbage metrics.json": ("metrics.json", lambda text: "\x00\xff garbage", "metrics.json is not valid JSON"),
    "metrics.json is a list": ("metrics.json", lambda text: "[1, 2, 3]", "metrics.json holds a JSON list"),
    "metrics.json holds a string": (
        "metrics.json",
        lambda text: '{"rate": "high"}',
        "metrics.json: 'rate' is not a number",
    ),
    "no metrics.json": ("metrics.json", None, "metrics.json is missing"),
    "no config.json": ("config.json", None, "config.json is missing"),
    "config.json is a list": ("config.json", lambda text: "[]", "config.json holds a JSON list"),
}


def damage(store: Store, run_id: str, kind: str) -> str:
    name, change, reason = DAMAGE[kind]
    path = store.run_dir(run_id) / name
    if change is None:
        path.unlink()
    else:
        path.write_text(change(path.read_text()))
    return reason


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_run_is_listed_with_its_reason_skipped_by_readers_and_redone(tmp_path, kind, capsys):
    store = filled(tmp_path)
    store.list()  # indexed while whole: the damage below must still be seen
    reason = damage(store, IDS[1], kind)
    assert [r["id"] for r in store.list()] == [IDS[0], IDS[2]]
    [damaged] = store.damaged()
    assert damaged["id"] == IDS[1] and damaged["status"] == "damaged" and reason in damaged["error"]
    assert not store.is_done(IDS[1]) and store.is_done(IDS[0])

    code, out, err = cli("ls", "--store", str(tmp_path), capsys=capsys)
    assert code == 0 and err == "" and all(run_id in out for run_id in IDS)
    assert f"damaged {IDS[1]}: {reason}" in out
    code, out, _ = cli("ls", "--json", "--store", str(tmp_path), capsys=capsys)
    assert {r["id"]: r["status"] for r in json.loads(out)} == {IDS[0]: "done", IDS[1]: "damaged", IDS[2]: "done"}
    code, _, err = cli("show", IDS[1], "--store", str(tmp_path), capsys=capsys)
    assert code == 2
    assert_one_line_error(err, IDS[1], "damaged")

    claim = store.claim(IDS[1])  # what `run` does before redoing it: the damaged copy is set aside, not deleted
    [aside] = list(store.damaged_dir.iterdir())
    assert aside.name.startswith(IDS[1]) and reason in (aside / "reason.txt").read_text()
    store.commit(spec(IDS[1]), {"seed": 1}, output(0.75))
    claim.release()
    assert {r["id"]: r["status"] for r in store.list(damaged=True)} == {run_id: "done" for run_id in IDS}


def test_report_skips_a_damaged_run_and_names_it(tmp_path, capsys):
    store = filled(tmp_path / "store")
    damage(store, IDS[0], "metrics.json is a list")
    code, out, err = cli("report", "--store", str(store.root), "--out", str(tmp_path / "report.html"), capsys=capsys)
    assert code == 0 and "report:" in out
    assert f"skipped 1 damaged run(s): {IDS[0]}" in err and "Traceback" not in err
    html = (tmp_path / "report.html").read_text()
    assert IDS[1] in html and IDS[0] not in html


def test_a_whole_run_is_never_set_aside_by_a_claim(tmp_path):
    store = filled(tmp_path)
    claim = store.claim(IDS[0])
    assert store.is_done(IDS[0]) and not store.damaged_dir.exists()
    claim.release()


# --- a corrupt index -------------------------------------------------------------------------------

GARBAGE = {
    "garbage": lambda data: bytes(range(256)) * 16,
    "truncated": lambda data: data[:1000],
    "empty page 1": lambda data: data[:100] + b"\x00" * (len(data) - 100),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_a_corrupt_index_is_read_around_then_set_aside_and_rebuilt(tmp_path, kind, capsys, monkeypatch):
    store = filled(tmp_path)
    index = tmp_path / "index.sqlite"
    index.write_bytes(GARBAGE[kind](index.read_bytes()))
    corrupt = index.read_bytes()

    with monkeypatch.context() as patch:  # a reader that may not write: reads the directories, changes nothing
        patch.setattr(Store, "_may_write", lambda self: False)
        assert [r["id"] for r in store.list()] == list(IDS)
        assert index.read_bytes() == corrupt

    code, out, err = cli("ls", "--store", str(tmp_path), capsys=capsys)  # a reader that may write: rebuilds
    assert code == 0 and err == "" and all(run_id in out for run_id in IDS)
    with sqlite3.connect(index) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 3
    assert [p.read_bytes() for p in tmp_path.glob("index.sqlite.corrupt.*")] == [corrupt]  # kept, for a post-mortem


def test_a_writer_rebuilds_a_corrupt_index_before_its_sweep(tmp_path):
    store = filled(tmp_path)
    (tmp_path / "index.sqlite").write_bytes(b"not a database" * 100)
    store.reconcile()  # what `execute` does first
    store.commit(spec("aaaa00000004"), {"seed": 4}, output(0.4))
    assert len(store.list()) == 4


def test_an_index_written_before_fingerprints_is_upgraded(tmp_path):
    store = filled(tmp_path)
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        db.execute("ALTER TABLE runs DROP COLUMN fingerprint")
    with monkeypatch_free_read_only(store):
        assert [r["id"] for r in store.list()] == list(IDS)
    assert [r["id"] for r in store.list()] == list(IDS)
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        assert "fingerprint" in {row[1] for row in db.execute("PRAGMA table_info(runs)")}


class monkeypatch_free_read_only:
    """Within: this store's readers behave as if they may not write."""

    def __init__(self, store: Store):
        self.store = store

    def __enter__(self):
        self.store._may_write = lambda: False

    def __exit__(self, *exc):
        del self.store._may_write


def test_a_reader_that_may_not_write_sees_runs_the_index_has_not_caught_up_with(tmp_path, monkeypatch):
    store = filled(tmp_path)
    monkeypatch.setattr(Store, "_index_run", lambda *args: None)  # killed between the rename and the index write
    store.commit(spec("aaaa00000004"), {"seed": 4}, output(0.4))
    monkeypatch.undo()
    before = (tmp_path / "index.sqlite").read_bytes()
    with monkeypatch_free_read_only(store):
        assert [r["id"] for r in store.list()][-1] == "aaaa00000004"
    assert (tmp_path / "index.sqlite").read_bytes() == before


# --- a store this user may only read -------------------------------------------------------------


def unprivileged() -> tuple[dict, str]:
    """subprocess.run arguments under which files without write permission cannot be written, and how."""
    if os.geteuid() != 0:
        return {}, "chmod"
    probe = [sys.executable, "-c", "import petridish.cli"]
    try:
        if subprocess.run(probe, user="nobody", capture_output=True, cwd="/", timeout=120).returncode == 0:
            return {"user": "nobody"}, "user nobody"
    except (OSError, subprocess.SubprocessError):
        pass
    setpriv = shutil.which("setpriv")
    if setpriv:  # root without the capabilities that override file permissions
        prefix = [
            setpriv,
            "--bounding-set=-dac_override,-dac_read_search,-fowner",
            "--inh-caps=-dac_override,-dac_read_search,-fowner",
            "--",
        ]
        with tempfile.TemporaryDirectory() as directory:
            os.chmod(directory, 0o555)
            try:
                attempt = subprocess.run(
                    [*prefix, sys.executable, "-c", f"open({directory!r} + '/x', 'w')"],
                    capture_output=True,
                    timeout=120,
                )
            finally:
                os.chmod(directory, 0o755)
        if attempt.returncode != 0:
            return {"prefix": prefix}, "root without CAP_DAC_OVERRIDE"
    pytest.skip("running as root, and neither user nobody nor setpriv can drop the right to write any file")


def set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        if path.is_dir():
            os.chmod(path, (mode | 0o755 | stat.S_IWUSR) if writable else (mode | 0o555) & ~0o222)
        else:
            os.chmod(path, (mode | 0o644 | stat.S_IWUSR) if writable else (mode | 0o444) & ~0o222)


def test_a_store_the_user_may_only_read_is_read(capsys):
    how, _ = unprivileged()
    base = Path(tempfile.mkdtemp(prefix="petridish-readonly-"))
    os.chmod(base, 0o755)
    try:
        store = filled(base / "store")
        store.commit(spec("aaaa00000004"), {"seed": 4}, output(0.4))
        store.list()
        (store.runs_dir / IDS[2] / "metrics.json").write_text("[]")  # damaged, and not yet seen by the index
        report_dir = base / "out"
        report_dir.mkdir()
        os.chmod(report_dir, 0o777)
        set_writable(store.root, False)
        index_before = (store.root / "index.sqlite").read_bytes()

        def petridish(*args: str) -> subprocess.CompletedProcess:
            command = [*how.get("prefix", []), sys.executable, "-m", "petridish", *args]
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
            return subprocess.run(
                command, capture_output=True, text=True, cwd="/", env=env, timeout=300, user=how.get("user")
            )

        listed = petridish("ls", "--json", "--store", str(store.root))
        assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
        assert {r["id"]: r["status"] for r in json.loads(listed.stdout)} == {
            IDS[0]: "done",
            IDS[1]: "done",
            IDS[2]: "damaged",
            "aaaa00000004": "done",
        }
        shown = petridish("show", IDS[0], "--json", "--store", str(store.root))
        assert shown.returncode == 0 and json.loads(shown.stdout)["metrics"]["rate"] == 0.0, shown.stderr
        reported = petridish("report", "--store", str(store.root), "--out", str(report_dir / "report.html"))
        assert reported.returncode == 0 and (report_dir / "report.html").is_file(), reported.stderr
        refused = petridish(
            "run",
            str(Path(__file__).resolve().parent.parent / "experiments" / "sweep_smoke.toml"),
            "--store",
            str(store.root),
        )
        assert refused.returncode == 2 and refused.stdout == "", refused
        assert_one_line_error(refused.stderr, str(store.root), "cannot write")
        assert (store.root / "index.sqlite").read_bytes() == index_before
    finally:
        set_writable(base, True)
        shutil.rmtree(base)


# --- a full disk ---------------------------------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def safetensors_no_space(*args, **kwargs):
    raise SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )


@pytest.mark.parametrize("where", ["weights", "json"])
def test_a_full_disk_during_a_commit_leaves_no_partial_run_and_says_what_it_needed(tmp_path, monkeypatch, where):
    store = filled(tmp_path)
    if where == "weights":
        monkeypatch.setattr(store_module, "save_file", safetensors_no_space)
    else:
        monkeypatch.setattr(store_module, "_write_json", no_space)
    big = RunOutput(metrics={"rate": 1.0}, weights={"weights": {"w": torch.ones(1024, 1024)}}, torch_threads=1)
    with pytest.raises(StoreError) as error:
        store.commit(spec("aaaa00000004"), {"seed": 4}, big)
    message = str(error.value)
    assert (
        "no space left on device" in message
        and "aaaa00000004" in message
        and "4.1 MiB" in message
        and "\n" not in message
    )
    monkeypatch.undo()
    assert list(store.partial_dir.iterdir()) == [] and not store.is_done("aaaa00000004")
    assert [r["id"] for r in store.list()] == list(IDS)  # nothing finished was lost


def test_the_store_path_is_a_file(tmp_path, capsys):
    path = tmp_path / "a-file"
    path.write_text("x")
    for store in (path, path / "under"):
        with pytest.raises(StoreError, match="is a file"):
            Store(store).check_writable()
        code, _, err = cli("ls", "--store", str(store), capsys=capsys)
        assert code == 2
        assert_one_line_error(err, str(store), "is a file")
