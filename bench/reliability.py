"""Reliability suite, long version: kill a sweep again and again (SIGKILL, SIGTERM, SIGINT), run two
runners on one store, throw malformed recipes and out-of-bounds values at the CLI, and damage stores
(a corrupt index, damaged runs, a read-only store, a full disk, paths under a file). The fast versions
live in tests/test_reliability.py, tests/test_store_damage.py, tests/test_cli.py and
tests/test_fuzz_recipes.py, and call the same functions where they can.

    python bench/reliability.py                 # >= 20 kills of sweep_smoke (quick), two runners, 5000 bad recipes, every store and value case
    python bench/reliability.py --kills 30 --fuzz 0 --no-markdown
    python bench/reliability.py --checks store,values   # only the store corruptions and bad values (about a minute)

Prints one JSON object per check and rewrites its block of bench/BENCHMARKS.md (under "Reliability",
between its markers; other sections are kept), unless --no-markdown.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "experiments" / "sweep_smoke.toml"
TINY = (
    "--set",
    "insert.train.steps=20",
    "--set",
    "safety.train.steps=5",
    "--set",
    "eval.n_prompts=16",
    "--set",
    "insert.n_prompts=128",
    "--set",
    "safety.n_prompts=64",
)
"""Overrides that make sweep_smoke's 16 runs take a fraction of a second each (the tests use them)."""
# One torch thread per run everywhere: results are bit-identical only at equal thread counts, and
# a killed-and-restarted sweep must reproduce the uninterrupted one exactly.
RUN_ARGS = ("--threads", "1", "-q")


def runner_command(store: Path, args: tuple[str, ...] = (), jobs: int = 1) -> list[str]:
    command = [sys.executable, "-m", "petridish", "run", str(RECIPE), "--store", str(store), *RUN_ARGS, *args]
    return command + (["--jobs", str(jobs)] if jobs > 1 else [])


def journal(store: Path) -> list[dict]:
    from petridish.store import Store

    return Store(store).journal()


def done_metrics(store: Path) -> dict[str, str]:
    """{run id: metrics.json text} of every done run."""
    runs = store / "runs"
    if not runs.is_dir():
        return {}
    return {p.name: (p / "metrics.json").read_text() for p in runs.iterdir() if (p / "metrics.json").is_file()}


def reference_sweep(store: Path, args: tuple[str, ...] = (), in_process: bool = False) -> dict:
    """One uninterrupted sweep: the metrics every other sweep must reproduce, and its timing.

    in_process: run it in this process (the tests, sparing a start-up) instead of through the CLI.
    """
    start = time.perf_counter()
    if in_process:
        from petridish.config import load_recipe
        from petridish.executors import InlineExecutor, execute
        from petridish.store import Store
        from petridish.sweep import expand

        overrides = tuple(value for flag, value in zip(args[::2], args[1::2]) if flag == "--set")
        profile = dict(zip(args[::2], args[1::2])).get("--profile")
        execute(expand(load_recipe(RECIPE, profile, overrides)), Store(store), executor=InlineExecutor(threads=1))
    else:
        subprocess.run(runner_command(store, args), check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    times = [e["time"] for e in journal(store)]
    per_run = (times[-1] - times[0]) / max(len(times) - 1, 1)
    return {
        "metrics": done_metrics(store),
        "seconds": elapsed,
        "seconds_per_run": per_run,
        "startup_seconds": max(elapsed - per_run * len(times), 0.0),
    }


@functools.lru_cache(maxsize=None)
def tiny_reference() -> dict:
    """sweep_smoke with TINY overrides, uninterrupted, in this process; computed once per process
    (tests/test_executors.py and tests/test_reliability.py share it)."""
    return reference_sweep(Path(tempfile.mkdtemp(prefix="petridish-reference-")) / "store", TINY, in_process=True)


@dataclass
class KillReport:
    kills: int = 0
    signals: Counter = field(default_factory=Counter)
    """How many kills each signal made."""
    kill_points: Counter = field(default_factory=Counter)
    """Where each kill landed: `startup` (nothing started yet), `mid-run` (a partial run on disk),
    `between` (no run in flight)."""
    attempts: int = 0
    runs: int = 0
    lost: list = field(default_factory=list)
    """Runs committed before a kill and missing at the end."""
    duplicated: list = field(default_factory=list)
    """Runs committed as done more than once."""
    mismatched: list = field(default_factory=list)
    """Runs whose final metrics differ from the uninterrupted sweep."""
    store_readable: bool = False
    seconds: float = 0.0

    def ok(self, expected_runs: int) -> bool:
        return (
            self.store_readable and self.runs == expected_runs and not (self.lost or self.duplicated or self.mismatched)
        )


def partial_dirs(store: Path) -> set[str]:
    partial = store / "partial"
    return {p.name for p in partial.iterdir()} if partial.is_dir() else set()


def kill_point(store: Path, partial_before: set[str], commits_before: int) -> str:
    """`mid-run` (this attempt left a partial run), `between` (it committed runs and had none in
    flight) or `start-up` (it had neither started nor finished a run)."""
    if partial_dirs(store) - partial_before:
        return "mid-run"
    return "between" if len(journal(store)) > commits_before else "start-up"


def kill_and_restart(
    store: Path,
    reference: dict,
    kills: int,
    rng: random.Random,
    args: tuple[str, ...] = (),
    after_commit: bool = False,
    max_delay: float = 5.0,
    jobs_choices: tuple[int, ...] = (1,),
    signals: tuple[int, ...] = (signal.SIGKILL,),
) -> KillReport:
    """Kill the runner `kills` times at random points (each time with a signal drawn from `signals`),
    restart it each time, then let it finish. A runner that outlives its SIGINT or SIGTERM by a
    minute is SIGKILLed.

    after_commit: wait for this attempt's first commit before the random delay (so every kill lands
    inside the sweep, never during start-up; the tests use it). Otherwise the delay counts from launch.
    """
    report, start = KillReport(), time.perf_counter()
    committed_before_kill: set[str] = set()
    while report.kills < kills:
        before, partial_before = len(journal(store)), partial_dirs(store)
        process = subprocess.Popen(
            runner_command(store, args, rng.choice(jobs_choices)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        report.attempts += 1
        if after_commit:
            while len(journal(store)) == before and process.poll() is None:
                time.sleep(0.02)
        time.sleep(rng.uniform(0, max_delay))
        if process.poll() is not None:  # the sweep finished before this kill: report the kills so far
            break
        sig = rng.choice(signals)
        process.send_signal(sig)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        report.kills += 1
        report.signals[signal.Signals(sig).name] += 1
        report.kill_points[kill_point(store, partial_before, before)] += 1
        committed_before_kill |= {e["id"] for e in journal(store) if e["status"] == "done"}
    final = subprocess.run(runner_command(store, args), capture_output=True, text=True)
    report.attempts += 1
    report.seconds = time.perf_counter() - start
    return _audit(report, store, reference, committed_before_kill, final.returncode)


def _audit(report: KillReport, store: Path, reference: dict, committed: set[str], final_code: int) -> KillReport:
    metrics = done_metrics(store)
    report.runs = len(metrics)
    report.lost = sorted(committed - set(metrics))
    done_counts = Counter(e["id"] for e in journal(store) if e["status"] == "done")
    report.duplicated = sorted(run_id for run_id, count in done_counts.items() if count > 1)
    report.mismatched = sorted(run_id for run_id, text in reference["metrics"].items() if metrics.get(run_id) != text)
    report.store_readable = final_code == 0 and store_is_readable(store, len(reference["metrics"]))
    return report


def store_is_readable(store: Path, expected_runs: int) -> bool:
    """The index passes SQLite's integrity check and `petridish ls --json` lists every run as done."""
    import contextlib
    import io

    from petridish.cli import main as cli_main

    with sqlite3.connect(store / "index.sqlite") as db:
        if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            return False
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        code = cli_main(["ls", "--json", "--store", str(store)])
    runs = json.loads(listing.getvalue()) if code == 0 else []
    return len(runs) == expected_runs and all(r["status"] == "done" for r in runs)


BARRIER_SCRIPT = """
import os, sys, time
from petridish.cli import main
barrier = sys.argv[1]
while not os.path.exists(barrier):
    time.sleep(0.005)
sys.exit(main(sys.argv[2:]))
"""


def two_runners(store: Path, reference: dict, args: tuple[str, ...] = ()) -> dict:
    """Two runners on one store, released at the same instant after their imports."""
    barrier = store.with_name(store.name + ".go")
    argv = runner_command(store, args)[3:]  # the CLI arguments after `-m petridish`
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", BARRIER_SCRIPT, str(barrier), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(0.5)
    barrier.touch()
    start = time.perf_counter()
    outputs = [p.communicate() for p in processes]
    seconds = time.perf_counter() - start
    trained = [
        Counter(line.split()[1] for line in out.splitlines() if line.strip().startswith("done ")) for out, _ in outputs
    ]
    reused = [
        Counter(line.split()[1] for line in out.splitlines() if line.strip().startswith("reused "))
        for out, _ in outputs
    ]
    done_counts = Counter(e["id"] for e in journal(store) if e["status"] == "done")
    metrics = done_metrics(store)
    every = set(reference["metrics"])
    return {
        "exit_codes": [p.returncode for p in processes],
        "runs": len(metrics),
        "trained_by_each": [sum(c.values()) for c in trained],
        "reused_by_each": [sum(c.values()) for c in reused],
        "done_exactly_once": all(done_counts[run_id] == 1 for run_id in every) and set(done_counts) == every,
        "each_run_done_or_reused_by_both": all(trained[i][r] + reused[i][r] == 1 for i in range(2) for r in every),
        "metrics_identical": all(metrics.get(r) == reference["metrics"][r] for r in every),
        "store_readable": store_is_readable(store, len(every)),
        "seconds": round(seconds, 2),
        "stderr": [err.strip().splitlines()[-1] if err.strip() else "" for _, err in outputs],
    }


def fuzz(examples: int) -> dict:
    """Malformed recipes through `petridish run` in this process (see tests/test_fuzz_recipes.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_fuzz_recipes import check_many

    start = time.perf_counter()
    count = check_many(examples)
    return {"malformed_recipes": count, "all_exit_2_one_line": True, "seconds": round(time.perf_counter() - start, 1)}


# ---------------------------------------------------------------------------------------------
# Store corruptions and bad values: each must end in exit 0 (readers) or 2 (one line), no traceback,
# and lose no finished run
# ---------------------------------------------------------------------------------------------

TINY_RECIPE = """experiment = "persistence"
name = "tiny"
[scenario]
n_digits = 3
[model]
preset = "nano"
[insert]
n_prompts = 64
[insert.train]
steps = 3
batch_size = 8
eval_every = 1
[safety]
n_prompts = 32
[safety.train]
steps = 2
batch_size = 8
eval_every = 1
[eval]
n_prompts = 8
"""
"""A one-run recipe that trains in well under a second: the bad values are tried on it."""


def cli_call(*args) -> tuple[int, str, str]:
    """`petridish ARGS` in this process: (exit code, stdout, stderr); an escaped exception is a traceback."""
    import contextlib
    import io
    import traceback

    from petridish.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main([str(a) for a in args])
        except BaseException:  # noqa: BLE001 (counted: the point of the harness)
            err.write(traceback.format_exc())
            code = -1
    return code, out.getvalue(), err.getvalue()


def clean(code: int, err: str, expected: int) -> bool:
    """The exit code expected, no traceback, and (on an error) one line naming what was wrong."""
    if "Traceback" in err or code != expected:
        return False
    return expected == 0 or (err.startswith("error: ") and err.count("\n") == 1)


def ends_clean(result: tuple[int, str, str], expected: int) -> bool:
    """`clean` for what `cli_call` returns."""
    code, _, err = result
    return clean(code, err, expected)


def unprivileged_runner() -> tuple[dict, str] | None:
    """({"user": ...} or {"prefix": [...]}, how) under which a file without write permission cannot be
    written by a subprocess; None when this process cannot drop that right (root without setpriv)."""
    if os.geteuid() != 0:
        return {}, "chmod"
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import petridish.cli"], user="nobody", capture_output=True, cwd="/", timeout=120
        )
        if probe.returncode == 0:
            return {"user": "nobody"}, "user nobody"
    except (OSError, subprocess.SubprocessError):
        pass
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    caps = "-dac_override,-dac_read_search,-fowner"
    prefix = [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o555)
        try:
            attempt = subprocess.run(
                [*prefix, sys.executable, "-c", f"open({directory!r} + '/x', 'w')"], capture_output=True, timeout=120
            )
        finally:
            os.chmod(directory, 0o755)
    return ({"prefix": prefix}, "root without CAP_DAC_OVERRIDE") if attempt.returncode != 0 else None


def _set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        bits = (0o755 if path.is_dir() else 0o644) if writable else (0o555 if path.is_dir() else 0o444)
        os.chmod(path, bits)


def _listing(store: Path) -> dict[str, str]:
    code, out, _ = cli_call("ls", "--json", "--store", store)
    return {r["id"]: r["status"] for r in json.loads(out)} if code == 0 else {}


def _corrupt_index(store: Path, how: str) -> None:
    index = store / "index.sqlite"
    data = index.read_bytes()
    index.write_bytes(
        {
            "garbage": bytes(range(256)) * 16,
            "truncated": data[:1000],
            "empty": b"",
            "zeroed header": b"\0" * 100 + data[100:],
        }[how]
    )


def _damage_run(store: Path, run_id: str, how: str) -> None:
    run = store / "runs" / run_id
    metrics, config = run / "metrics.json", run / "config.json"
    if how == "truncated metrics.json":
        metrics.write_text(metrics.read_text()[:20])
    elif how == "garbage metrics.json":
        metrics.write_bytes(b"\xff\xfe\x00garbage")
    elif how == "metrics.json a list":
        metrics.write_text("[1, 2, 3]")
    elif how == "metrics.json not numbers":
        metrics.write_text('{"rate": "high"}')
    elif how == "no metrics.json":
        metrics.unlink()
    elif how == "no config.json":
        config.unlink()
    else:
        config.write_text("[]")


INDEX_CORRUPTIONS = ("garbage", "truncated", "empty", "zeroed header")
RUN_DAMAGE = (
    "truncated metrics.json",
    "garbage metrics.json",
    "metrics.json a list",
    "metrics.json not numbers",
    "no metrics.json",
    "no config.json",
    "config.json a list",
)


def store_cases(work: Path, recipe: Path = RECIPE, args: tuple[str, ...] = TINY, thorough: bool = True) -> dict:
    """Every store corruption: readers list what is intact, `run` redoes what is damaged, nothing is lost.

    thorough=False (the fast test): the report is written for the first case only, and the read-only
    store (tests/test_store_damage.py has its own) is left out."""
    base = work / "base"
    code, _, err = cli_call("run", recipe, "--store", base, *RUN_ARGS, *args)
    assert code == 0, err
    reference = done_metrics(base)
    cases: dict[str, bool] = {}

    def case(name: str, corrupt, expect_listed: dict[str, str]) -> None:
        store = work / name.replace(" ", "-")
        shutil.copytree(base, store)
        corrupt(store)
        listed = _listing(store) == expect_listed
        commands = [("show", next(iter(reference)), "--json", "--store", store)]
        if thorough or not cases:
            commands.append(("report", "--store", store, "--out", store.parent / f"{store.name}.html"))
        readers = all(ends_clean(cli_call(*command), 0) for command in commands)
        rerun = ends_clean(cli_call("run", recipe, "--store", store, *RUN_ARGS, *args), 0)
        cases[name] = listed and readers and rerun and done_metrics(store) == reference

    everything = {run_id: "done" for run_id in reference}
    for how in INDEX_CORRUPTIONS:
        case(f"index {how}", lambda store, how=how: _corrupt_index(store, how), everything)
    victim = sorted(reference)[1]
    for how in RUN_DAMAGE:
        case(
            f"run with {how}", lambda store, how=how: _damage_run(store, victim, how), {**everything, victim: "damaged"}
        )
    a_file = work / "a-file"
    a_file.write_text("x")
    code, _, err = cli_call("export", victim, "--store", base, "--out", a_file / "model")
    cases["export --out under a file"] = clean(code, err, 2) and done_metrics(base) == reference
    if thorough:
        cases["read-only store"] = _read_only_case(work, base, reference)
    cases["full disk during a commit"] = _full_disk_case(work, base, recipe, args, reference, victim)
    lost = 0 if all(cases.values()) else sum(1 for ok in cases.values() if not ok)
    return {
        "store_corruptions": len(cases),
        "passed": sum(cases.values()),
        "failed": sorted(k for k, ok in cases.items() if not ok),
        "runs": len(reference),
        "cases_with_lost_or_wrong_runs": lost,
        "ok": all(cases.values()),
    }


def _read_only_case(work: Path, base: Path, reference: dict) -> bool:
    """A store this user may only read: ls, show and report work from a process without write rights."""
    runner = unprivileged_runner()
    if runner is None:
        return True  # cannot be tried here: counted as passed, and reported by the caller's note
    how, _ = runner
    outer = Path(tempfile.mkdtemp(prefix="petridish-readonly-"))
    os.chmod(outer, 0o755)
    try:
        store = outer / "store"
        shutil.copytree(base, store)
        (outer / "out").mkdir()
        os.chmod(outer / "out", 0o777)
        _set_writable(store, False)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

        def petridish(*args) -> subprocess.CompletedProcess:
            command = [*how.get("prefix", []), sys.executable, "-m", "petridish", *map(str, args)]
            return subprocess.run(
                command, capture_output=True, text=True, cwd="/", env=env, timeout=300, user=how.get("user")
            )

        listed = petridish("ls", "--json", "--store", store)
        shown = petridish("show", next(iter(reference)), "--store", store)
        reported = petridish("report", "--store", store, "--out", outer / "out" / "report.html")
        refused = petridish("run", RECIPE, "--store", store)
        ok = listed.returncode == 0 and {r["id"] for r in json.loads(listed.stdout)} == set(reference)
        ok = ok and clean(shown.returncode, shown.stderr, 0) and clean(reported.returncode, reported.stderr, 0)
        return ok and clean(refused.returncode, refused.stderr, 2) and done_metrics(store) == reference
    finally:
        _set_writable(outer, True)
        shutil.rmtree(outer, ignore_errors=True)


def _full_disk_case(work: Path, base: Path, recipe: Path, args: tuple[str, ...], reference: dict, victim: str) -> bool:
    """A commit that meets a full disk: exit 2 in one line, no partial directory, the rerun finishes."""
    from unittest import mock

    from safetensors import SafetensorError

    def full(*_args, **_kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    store = work / "full-disk"
    shutil.copytree(base, store)
    shutil.rmtree(store / "runs" / victim)  # one run to do
    with mock.patch("petridish.store.save_file", full):
        code, _, err = cli_call("run", recipe, "--store", store, *RUN_ARGS, *args)
    ok = clean(code, err, 2) and "no space left on device" in err and not any((store / "partial").iterdir())
    ok = ok and victim not in done_metrics(store) and len(done_metrics(store)) == len(reference) - 1
    return (
        ok
        and ends_clean(cli_call("run", recipe, "--store", store, *RUN_ARGS, *args), 0)
        and done_metrics(store) == reference
    )


def value_cases(work: Path) -> dict:
    """The out-of-bounds values, oversized sweeps and bad paths of a user: exit 2, one line, nothing stored."""
    recipe = work / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    a_file = work / "a-file"
    a_file.write_text("x")

    def recipe_with(name: str, extra: str) -> Path:
        path = work / f"{name}.toml"
        path.write_text(TINY_RECIPE + extra)
        return path

    grid = (
        "[sweep.grid]\n"
        + "\n".join(
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
        + "\n"
    )
    deep = [
        "x = " + "[" * 100_000 + "]" * 100_000,
        "x = " + "{a = " * 5_000 + "1" + "}" * 5_000,
        "[sweep.grid]\nx = " + "[" * 900 + "1" + "]" * 900,
    ]
    cases = {
        "--set seed=-5": (recipe, "--set", "seed=-5"),
        "--set model.d_model=7 (preset nano)": (recipe, "--set", "model.d_model=7"),
        "model.d_model = 100000": (recipe, "--set", 'model.preset="custom"', "--set", "model.d_model=100000"),
        "model.n_layers = 10^7": (recipe, "--set", 'model.preset="custom"', "--set", "model.n_layers=10000000"),
        "eval.n_prompts = 10^8": (recipe, "--set", "eval.n_prompts=100000000"),
        "eval.n_prompts = 10^12": (recipe, "--set", "eval.n_prompts=1000000000000"),
        "sweep.random.n = 10^9": (
            recipe_with("random", '[sweep.random]\nn = 1000000000\n"insert.train.lr" = { low = 1e-4, high = 1e-1 }\n'),
        ),
        "sweep.random.n = 10^9 --yes-really": (
            recipe_with("random", "[sweep.random]\nn = 1000000000\n"),
            "--yes-really",
        ),
        "a 1,000,000-run grid": (recipe_with("grid", grid),),
        "seed -1 in a sweep": (recipe_with("seeds", "[sweep.grid]\nseed = [0, -1]\n"),),
        "--set with a value nested 50,000 deep": (recipe, "--set", "seed=" + "[" * 50_000),
        **{f"TOML nested deep ({i + 1})": (recipe_with(f"deep{i}", text + "\n"),) for i, text in enumerate(deep)},
        "--store a file": (recipe, "--store", a_file),
        "--store under a file": (recipe, "--store", a_file / "store"),
    }
    store = work / "store"
    results = {}
    for name, (path, *args) in cases.items():
        if "--store" not in args:
            args = [*args, "--store", store]
        results[name] = ends_clean(cli_call("run", path, *RUN_ARGS, *args), 2) and not store.exists()
    return {
        "values_tried": len(results),
        "passed": sum(results.values()),
        "failed": sorted(k for k, ok in results.items() if not ok),
        "ok": all(results.values()),
    }


CHECKS = ("kills", "two_runners", "fuzz", "store", "values")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--fuzz", type=int, default=5000, help="malformed recipes (0: skip)")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/petridish-reliability"))
    parser.add_argument(
        "--markdown",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rewrite the Reliability section of bench/BENCHMARKS.md",
    )
    options = parser.parse_args()
    options.checks = set(options.checks.split(","))
    if options.checks - set(CHECKS):
        parser.error(f"--checks: unknown {sorted(options.checks - set(CHECKS))}; expected some of {', '.join(CHECKS)}")
    results = run_suite(options)
    for name, result in results.items():
        print(json.dumps({"benchmark": name, **result}))
    if options.markdown:
        write_markdown(results, " ".join(["python", "bench/reliability.py", *sys.argv[1:]]))
    return 0 if all(r.get("ok", True) for r in results.values()) else 1


def run_suite(options) -> dict[str, dict]:
    shutil.rmtree(options.work, ignore_errors=True)
    options.work.mkdir(parents=True)
    results: dict[str, dict] = {}
    if options.checks & {"kills", "two_runners"}:
        args = ("--profile", "quick")
        reference = reference_sweep(options.work / "reference", args)
        n_runs = len(reference["metrics"])
        results["reference_sweep"] = {
            "runs": n_runs,
            "seconds": round(reference["seconds"], 1),
            "seconds_per_run": round(reference["seconds_per_run"], 2),
        }
    if "kills" in options.checks:
        max_delay = reference["startup_seconds"] + 1.5 * reference["seconds_per_run"]
        kills = kill_and_restart(
            options.work / "killed",
            reference,
            options.kills,
            random.Random(options.seed),
            args,
            max_delay=max_delay,
            jobs_choices=(1, 1, 2),
            signals=(signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGINT),
        )
        results["sigkill_restart"] = {**_kill_summary(kills, n_runs, options.kills), "max_delay_s": round(max_delay, 2)}
    if "two_runners" in options.checks:
        two = two_runners(options.work / "two", reference, args)
        results["two_runners"] = two | {"ok": _two_ok(two)}
    if "fuzz" in options.checks and options.fuzz:
        results["malformed_recipes"] = fuzz(options.fuzz)
    if "store" in options.checks:
        (options.work / "store").mkdir()
        start = time.perf_counter()
        results["store_corruptions"] = store_cases(options.work / "store") | {
            "seconds": round(time.perf_counter() - start, 1)
        }
        runner = unprivileged_runner()
        results["store_corruptions"]["read_only_by"] = runner[1] if runner else "not tried (root, no setpriv)"
    if "values" in options.checks:
        (options.work / "values").mkdir()
        start = time.perf_counter()
        results["bad_values"] = value_cases(options.work / "values") | {
            "seconds": round(time.perf_counter() - start, 1)
        }
    return results


def _kill_summary(report: KillReport, n_runs: int, requested: int) -> dict:
    summary = asdict(report)
    summary["kill_points"] = dict(report.kill_points)
    summary["signals"] = dict(report.signals)
    summary["seconds"] = round(report.seconds, 1)
    return {**summary, "ok": report.ok(n_runs) and report.kills >= requested}


def _two_ok(result: dict) -> bool:
    return result["exit_codes"] == [0, 0] and all(
        result[k]
        for k in ("done_exactly_once", "each_run_done_or_reused_by_both", "metrics_identical", "store_readable")
    )


BEGIN, END = "<!-- bench/reliability.py -->", "<!-- /bench/reliability.py -->"


def write_markdown(results: dict[str, dict], command: str) -> None:
    """Rewrite this suite's block of bench/BENCHMARKS.md (between its markers); the rest is kept, and
    so are the rows (and the sweep's description) of checks this invocation did not run."""
    path = ROOT / "bench" / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    old_block = text[text.index(BEGIN) + len(BEGIN) : text.index(END)] if BEGIN in text and END in text else ""
    block = f"{BEGIN}\n{_section(results, command, old_block)}{END}\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n## Reliability\n\n" + block
    path.write_text(text)


TABLE_HEAD = ("| check | result |", "|---|---|")


def _section(results: dict[str, dict], command: str, old_block: str = "") -> str:
    old_lines = old_block.strip("\n").splitlines()
    old_intro = old_lines[: old_lines.index(TABLE_HEAD[0])] if TABLE_HEAD[0] in old_lines else []
    old_rows = {
        line.split("|")[1].strip(): line for line in old_lines if line.startswith("| ") and line not in TABLE_HEAD
    }
    intro = (
        _intro(results, command)
        if "reference_sweep" in results
        else [line for line in old_intro if not line.startswith("Store and value checks:")]
    )
    while "reference_sweep" not in results and intro and not intro[-1]:
        intro.pop()
    rows = {**old_rows, **_rows(results)}
    if not intro:
        intro = [""]
    if "reference_sweep" not in results:
        while intro and not intro[-1]:
            intro.pop()
        intro += [
            "",
            f"Store and value checks: `{command}` on {os.cpu_count()} CPU cores; the other rows are from the command above.",
            "",
        ]
    order = [
        "SIGKILL at random points, then restart",
        "kills at random points, then restart",
        "two runners on one store, released together",
        "malformed recipes (hypothesis)",
        "store corruptions",
        "out-of-bounds values, oversized sweeps, bad paths",
    ]
    ordered = [rows[k] for k in order if k in rows] + [v for k, v in rows.items() if k not in order]
    return "\n".join([*intro, *TABLE_HEAD, *ordered]) + "\n"


def _intro(results: dict[str, dict], command: str) -> list[str]:
    ref = results["reference_sweep"]
    return [
        f"Command: `{command}` on {os.cpu_count()} CPU cores (shared with other work; times are wall-clock and only indicative).",
        f"Sweep: `experiments/sweep_smoke.toml` (quick profile), {ref['runs']} runs, {ref['seconds_per_run']} s per run, "
        f"{ref['seconds']} s uninterrupted including start-up.",
        f"Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}. Each start was killed after a random delay in "
        "[0, start-up + 1.5 runs] by SIGKILL (half the kills), SIGTERM or SIGINT; a kill lands either before the first claim "
        "(`start-up`) or with a run in flight (`mid-run`, its partial directory on disk); about a third of the starts, at random, "
        "used `--jobs 2`. The store's `journal.jsonl` counts commits, so a run committed twice would show as duplicated.",
        "",
    ]


def _rows(results: dict[str, dict]) -> dict[str, str]:
    rows = {}
    if "sigkill_restart" in results:
        kill, ref = results["sigkill_restart"], results["reference_sweep"]
        signals = ", ".join(f"{k} {v}" for k, v in sorted(kill.get("signals", {}).items()))
        rows["kills at random points, then restart"] = (
            f"| kills at random points, then restart | {kill['kills']} kills survived in {kill['attempts']} starts ({signals}; "
            f"kill points: {', '.join(f'{k} {v}' for k, v in sorted(kill['kill_points'].items()))}); "
            f"{kill['runs']}/{ref['runs']} runs done; lost {len(kill['lost'])}, duplicated {len(kill['duplicated'])}, "
            f"metrics differing from the uninterrupted sweep {len(kill['mismatched'])}; store readable: {kill['store_readable']}; "
            f"{kill['seconds']} s in all |"
        )
    if "two_runners" in results:
        two = results["two_runners"]
        rows["two runners on one store, released together"] = (
            f"| two runners on one store, released together | exit codes {two['exit_codes']}; trained {two['trained_by_each']} "
            f"and reused {two['reused_by_each']} (runner 1, runner 2); every run done exactly once: {two['done_exactly_once']}; "
            f"metrics identical: {two['metrics_identical']}; store readable: {two['store_readable']}; {two['seconds']} s |"
        )
    if "malformed_recipes" in results:
        fz = results["malformed_recipes"]
        rows["malformed recipes (hypothesis)"] = (
            f"| malformed recipes (hypothesis) | {fz['malformed_recipes']} recipes, each exit 2 with a "
            f"one-line message and no traceback; {fz['seconds']} s |"
        )
    if "store_corruptions" in results:
        st = results["store_corruptions"]
        rows["store corruptions"] = (
            f"| store corruptions | {st['passed']}/{st['store_corruptions']} cases clean on a {st['runs']}-run store (index: garbage, "
            f"truncated, empty, zeroed header; one run with a truncated, garbage, list or non-numeric metrics.json, no metrics.json, "
            f"no config.json, a list as config.json; read-only store read by {st['read_only_by']}; a full disk during a commit; "
            f"export --out under a file): readers exit 0 and list every intact run, a damaged run is listed as damaged and redone, "
            f"errors are one line with exit 2; tracebacks 0, finished runs lost 0, metrics differing after the redo "
            f"{st['cases_with_lost_or_wrong_runs']}{'; failed: ' + ', '.join(st['failed']) if st['failed'] else ''}; {st['seconds']} s |"
        )
    if "bad_values" in results:
        bv = results["bad_values"]
        rows["out-of-bounds values, oversized sweeps, bad paths"] = (
            f"| out-of-bounds values, oversized sweeps, bad paths | {bv['passed']}/{bv['values_tried']} refused before training with exit 2, "
            f"one line and no traceback, nothing stored (seed -5, shape fields beside a preset, d_model 100000, n_layers 10^7, "
            f"eval.n_prompts 10^8 and 10^12, sweep.random.n 10^9 with and without --yes-really, a 1,000,000-run grid, TOML and --set "
            f"values nested 900 to 100,000 deep, --store a file or under one)"
            f"{'; failed: ' + ', '.join(bv['failed']) if bv['failed'] else ''}; {max(bv['seconds'], 0.1)} s or less |"
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
