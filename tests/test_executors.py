"""Executors: the process pool and Ray give the local executor's metrics; failures are data, Ctrl-C
stops cleanly, and the CLI's executor options are checked."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from petridish.cli import main
from petridish.config import load_recipe
from petridish.errors import BadInput
from petridish.executors import InlineExecutor, PoolExecutor, RayExecutor, execute, make_executor
from petridish.experiments import EXPERIMENTS, Experiment
from petridish.store import Store
from petridish.sweep import RunSpec, expand
from petridish.train.engine import Diverged

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import reliability  # noqa: E402  (the same reference sweep as tests/test_reliability.py)

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "sweep_smoke.toml"
TINY = tuple(value for value in reliability.TINY if value != "--set")
"""sweep_smoke's 16 runs at a fraction of a second each (bench/reliability.py's overrides)."""


def smoke_specs() -> list[RunSpec]:
    return expand(load_recipe(SMOKE, None, TINY))


@pytest.fixture(scope="module")
def local_metrics() -> dict[str, dict]:
    """The 16-run smoke sweep in this process, one torch thread per run: the reference."""
    metrics = {run_id: json.loads(text) for run_id, text in reliability.tiny_reference()["metrics"].items()}
    assert sorted(metrics) == sorted(s.id for s in smoke_specs())
    return metrics


def test_in_process_runs_at_the_default_threads_whatever_the_process_had(local_metrics, tmp_path):
    """The executor, not a test fixture, pins the threads: two in this process, one per run."""
    torch.set_num_threads(2)
    outcomes = execute(smoke_specs(), Store(tmp_path), executor=InlineExecutor())
    assert torch.get_num_threads() == 2  # given back afterwards
    assert {o.spec.id: o.metrics for o in outcomes} == local_metrics
    provenance = json.loads((Store(tmp_path).run_dir(outcomes[0].spec.id) / "provenance.json").read_text())
    assert provenance["torch_threads"] == 1 and provenance["ensemble"]["members"] == 4  # 2 seeds x 2 methods


def test_smoke_recipe_is_a_sweep_of_sixteen_distinct_runs():
    for profile in (None, "quick", "full"):
        specs = expand(load_recipe(SMOKE, profile))
        assert len(specs) == len({s.id for s in specs}) == 16
    assert len({s.config.seed for s in smoke_specs()}) == 2


def diverging(spec: RunSpec) -> RunSpec:
    train = dataclasses.replace(spec.config.insert.train)
    object.__setattr__(train, "lr", 1e30)  # past validation: the loss blows up
    config = dataclasses.replace(spec.config, insert=dataclasses.replace(spec.config.insert, train=train))
    return RunSpec("diverging000", spec.experiment, "diverging", config)


def test_process_pool_matches_local_and_records_failures(local_metrics, tmp_path):
    specs = smoke_specs()
    specs.insert(3, diverging(specs[0]))
    outcomes = execute(
        specs, Store(tmp_path), executor=PoolExecutor(jobs=2)
    )  # default threads, ensembles split over 2 slots
    assert [o.spec.id for o in outcomes] == [s.id for s in specs]  # in spec order, whatever finished first
    failed = outcomes.pop(3)
    assert failed.status == "failed" and "loss became" in failed.error
    assert {o.spec.id: o.metrics for o in outcomes} == local_metrics
    assert all(o.status == "done" for o in outcomes)


def test_ray_sixteen_run_sweep_matches_local(local_metrics, tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="ray is not installed")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local Ray, started and stopped by the executor
    try:
        outcomes = execute(smoke_specs(), Store(tmp_path), executor=RayExecutor(num_cpus=2))  # default threads
    except BadInput as error:
        pytest.skip(f"Ray cannot start on this machine: {error}")
    assert [o.status for o in outcomes] == ["done"] * 16
    assert {o.spec.id: o.metrics for o in outcomes} == local_metrics


def test_executor_options_are_checked(capsys):
    assert isinstance(make_executor("local"), InlineExecutor)
    assert isinstance(make_executor("local", jobs=3), PoolExecutor) and make_executor("local", jobs=3).slots == 3
    assert isinstance(make_executor("ray", ray_address="127.0.0.1:1"), RayExecutor)
    for argv, needle in (
        (["--jobs", "0"], "--jobs 0"),
        (["--threads", "0"], "--threads 0"),
        (["--executor", "spark"], "--executor 'spark'"),
    ):
        assert main(["run", str(SMOKE), *argv]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1


def test_unreachable_ray_address_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray", reason="ray is not installed")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens there
    assert (
        main(["run", str(SMOKE), "--executor", "ray", "--store", str(tmp_path), *sum((["--set", t] for t in TINY), [])])
        == 2
    )
    err = capsys.readouterr().err
    assert "127.0.0.1:1" in err and err.count("\n") == 1


# --- failures and Ctrl-C through the CLI, with a stand-in experiment (no training) -------------

RECIPE = 'experiment = "persistence"\nname = "standin"\n[sweep.grid]\nseed = [0, 1, 2]\n'


def standin(behaviour):
    """The persistence experiment with its `run` replaced: seed -> what happens."""

    def run(config, ctx):
        ctx.log({"stage": "insert", "step": 1, "loss": 1.0})
        return behaviour(config.seed)

    real = EXPERIMENTS["persistence"]
    return Experiment(name=real.name, config_cls=real.config_cls, run=run, headline=real.headline)


def succeed(seed):
    return {"persistence": seed / 10}


def test_failures_are_one_line_in_the_cli_and_the_sweep_goes_on(tmp_path, capsys, monkeypatch):
    def behaviour(seed):
        if seed == 0:
            raise Diverged("insert: loss became nan at step 7")
        if seed == 1:
            raise ValueError("boom\nsecond line")
        return succeed(seed)

    monkeypatch.setitem(EXPERIMENTS, "persistence", standin(behaviour))
    (tmp_path / "r.toml").write_text(RECIPE)
    assert main(["run", str(tmp_path / "r.toml"), "--store", str(tmp_path / "store"), "-q"]) == 1
    lines = capsys.readouterr().out.splitlines()
    failed = [line for line in lines if line.strip().startswith("failed")]
    assert len(failed) == 2 and len([line for line in lines if line.strip().startswith("done")]) == 1
    assert "loss became nan at step 7" in failed[0] and "error.txt" in failed[0]
    assert "ValueError: boom" in failed[1] and "second line" not in failed[1]
    store = Store(tmp_path / "store")
    tracebacks = [
        (store.failed_dir / r["id"] / "error.txt").read_text() for r in store.list() if r["status"] == "failed"
    ]
    assert any("Traceback" in t and "second line" in t for t in tracebacks)


def test_ctrl_c_keeps_finished_runs_and_the_next_run_resumes(tmp_path, capsys, monkeypatch):
    def interrupted(seed):
        if seed == 1:
            raise KeyboardInterrupt
        return succeed(seed)

    monkeypatch.setitem(EXPERIMENTS, "persistence", standin(interrupted))
    (tmp_path / "r.toml").write_text(RECIPE)
    argv = ["run", str(tmp_path / "r.toml"), "--store", str(tmp_path / "store"), "-q"]
    assert main(argv) == 130
    assert "interrupted: 1 of 3 run(s) finished" in capsys.readouterr().err
    store = Store(tmp_path / "store")
    assert [r["status"] for r in store.list()] == ["done"]
    assert list(store.locks_dir.iterdir()) == []  # every claim released

    monkeypatch.setitem(EXPERIMENTS, "persistence", standin(succeed))
    assert main(argv) == 0
    statuses = [
        word
        for line in capsys.readouterr().out.splitlines()
        for word in line.split()[:1]
        if word in ("done", "reused", "failed")
    ]
    assert sorted(statuses) == ["done", "done", "reused"]
    assert list(store.partial_dir.iterdir()) == []  # the interrupted run's partial directory was cleared


def test_ctrl_c_stops_a_process_pool_and_its_workers(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it."""
    store = tmp_path / "store"
    command = [
        sys.executable,
        "-m",
        "petridish",
        "run",
        str(SMOKE),
        "--store",
        str(store),
        "--jobs",
        "2",
        "--threads",
        "1",
        "-q",
        "--set",
        "insert.train.steps=50000",
    ]  # minutes per run: only stopping the workers ends it soon
    runner = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (store / "partial").is_dir() or not any((store / "partial").iterdir()):
            assert runner.poll() is None and time.monotonic() < deadline, "the sweep never started"
            time.sleep(0.05)
        os.killpg(runner.pid, signal.SIGINT)
        _, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert runner.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert group_gone(runner.pid, within=20), "a worker of the interrupted sweep is still running"
    assert all(r["status"] == "done" for r in Store(store).list())  # readable, and nothing half-done listed


def group_gone(group: int, within: float) -> bool:
    """True once no process of `group` is left (exited workers may linger as zombies until reaped)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False
