"""Reliability suite, long version: SIGKILL a sweep again and again, run two runners on one store,
throw malformed recipes at the CLI. The fast versions live in tests/test_reliability.py and
tests/test_fuzz_recipes.py and call the same functions.

    python bench/reliability.py                 # >= 20 kills of sweep_smoke (quick), two runners, 5000 bad recipes
    python bench/reliability.py --kills 30 --fuzz 0 --no-markdown

Prints one JSON object per check and rewrites its block of bench/BENCHMARKS.md (under "Reliability",
between its markers; other sections are kept), unless --no-markdown.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
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
TINY = ("--set", "insert.train.steps=20", "--set", "safety.train.steps=5", "--set", "eval.n_prompts=16",
        "--set", "insert.n_prompts=128", "--set", "safety.n_prompts=64")
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
    return {"metrics": done_metrics(store), "seconds": elapsed, "seconds_per_run": per_run, "startup_seconds": max(elapsed - per_run * len(times), 0.0)}


@functools.lru_cache(maxsize=None)
def tiny_reference() -> dict:
    """sweep_smoke with TINY overrides, uninterrupted, in this process; computed once per process
    (tests/test_executors.py and tests/test_reliability.py share it)."""
    return reference_sweep(Path(tempfile.mkdtemp(prefix="petridish-reference-")) / "store", TINY, in_process=True)


@dataclass
class KillReport:
    kills: int = 0
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
        return self.store_readable and self.runs == expected_runs and not (self.lost or self.duplicated or self.mismatched)


def partial_dirs(store: Path) -> set[str]:
    partial = store / "partial"
    return {p.name for p in partial.iterdir()} if partial.is_dir() else set()


def kill_point(store: Path, partial_before: set[str], commits_before: int) -> str:
    """`mid-run` (this attempt left a partial run), `between` (it committed runs and had none in
    flight) or `start-up` (it had neither started nor finished a run)."""
    if partial_dirs(store) - partial_before:
        return "mid-run"
    return "between" if len(journal(store)) > commits_before else "start-up"


def kill_and_restart(store: Path, reference: dict, kills: int, rng: random.Random, args: tuple[str, ...] = (),
                     after_commit: bool = False, max_delay: float = 5.0, jobs_choices: tuple[int, ...] = (1,)) -> KillReport:
    """SIGKILL the runner `kills` times at random points, restart it each time, then let it finish.

    after_commit: wait for this attempt's first commit before the random delay (so every kill lands
    inside the sweep, never during start-up; the tests use it). Otherwise the delay counts from launch.
    """
    report, start = KillReport(), time.perf_counter()
    committed_before_kill: set[str] = set()
    while report.kills < kills:
        before, partial_before = len(journal(store)), partial_dirs(store)
        process = subprocess.Popen(runner_command(store, args, rng.choice(jobs_choices)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report.attempts += 1
        if after_commit:
            while len(journal(store)) == before and process.poll() is None:
                time.sleep(0.02)
        time.sleep(rng.uniform(0, max_delay))
        if process.poll() is not None:  # the sweep finished before this kill: report the kills so far
            break
        process.kill()
        process.wait()
        report.kills += 1
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
    processes = [subprocess.Popen([sys.executable, "-c", BARRIER_SCRIPT, str(barrier), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    time.sleep(0.5)
    barrier.touch()
    start = time.perf_counter()
    outputs = [p.communicate() for p in processes]
    seconds = time.perf_counter() - start
    trained = [Counter(line.split()[1] for line in out.splitlines() if line.strip().startswith("done ")) for out, _ in outputs]
    reused = [Counter(line.split()[1] for line in out.splitlines() if line.strip().startswith("reused ")) for out, _ in outputs]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--fuzz", type=int, default=5000, help="malformed recipes (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/petridish-reliability"))
    parser.add_argument("--markdown", action=argparse.BooleanOptionalAction, default=True, help="rewrite the Reliability section of bench/BENCHMARKS.md")
    options = parser.parse_args()
    results = run_suite(options)
    for name, result in results.items():
        print(json.dumps({"benchmark": name, **result}))
    if options.markdown:
        write_markdown(results, " ".join(["python", "bench/reliability.py", *sys.argv[1:]]))
    return 0 if all(r.get("ok", True) for r in results.values()) else 1


def run_suite(options) -> dict[str, dict]:
    import shutil

    shutil.rmtree(options.work, ignore_errors=True)
    options.work.mkdir(parents=True)
    args = ("--profile", "quick")
    reference = reference_sweep(options.work / "reference", args)
    n_runs = len(reference["metrics"])
    max_delay = reference["startup_seconds"] + 1.5 * reference["seconds_per_run"]
    rng = random.Random(options.seed)
    kills = kill_and_restart(options.work / "killed", reference, options.kills, rng, args, max_delay=max_delay, jobs_choices=(1, 1, 2))
    results = {
        "reference_sweep": {"runs": n_runs, "seconds": round(reference["seconds"], 1), "seconds_per_run": round(reference["seconds_per_run"], 2)},
        "sigkill_restart": {**_kill_summary(kills, n_runs, options.kills), "max_delay_s": round(max_delay, 2)},
        "two_runners": (two := two_runners(options.work / "two", reference, args)) | {"ok": _two_ok(two)},
    }
    if options.fuzz:
        results["malformed_recipes"] = fuzz(options.fuzz)
    return results


def _kill_summary(report: KillReport, n_runs: int, requested: int) -> dict:
    summary = asdict(report)
    summary["kill_points"] = dict(report.kill_points)
    summary["seconds"] = round(report.seconds, 1)
    return {**summary, "ok": report.ok(n_runs) and report.kills >= requested}


def _two_ok(result: dict) -> bool:
    return result["exit_codes"] == [0, 0] and all(result[k] for k in ("done_exactly_once", "each_run_done_or_reused_by_both", "metrics_identical", "store_readable"))


BEGIN, END = "<!-- bench/reliability.py -->", "<!-- /bench/reliability.py -->"


def write_markdown(results: dict[str, dict], command: str) -> None:
    """Rewrite this suite's block of bench/BENCHMARKS.md (between its markers); the rest is kept."""
    path = ROOT / "bench" / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{_section(results, command)}{END}\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n## Reliability\n\n" + block
    path.write_text(text)


def _section(results: dict[str, dict], command: str) -> str:
    ref, kill, two = results["reference_sweep"], results["sigkill_restart"], results["two_runners"]
    lines = [
        f"Command: `{command}` on {os.cpu_count()} CPU cores (shared with other work; times are wall-clock and only indicative).",
        f"Sweep: `experiments/sweep_smoke.toml` (quick profile), {ref['runs']} runs, {ref['seconds_per_run']} s per run, "
        f"{ref['seconds']} s uninterrupted including start-up.",
        f"Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}. Each start was killed after a random delay in "
        "[0, start-up + 1.5 runs]; a kill lands either before the first claim (`start-up`) or with a run in flight (`mid-run`, "
        "its partial directory on disk); about a third of the starts, at random, used `--jobs 2`. The store's `journal.jsonl` "
        "counts commits, so a run committed twice would show as duplicated.",
        "",
        "| check | result |",
        "|---|---|",
        f"| SIGKILL at random points, then restart | {kill['kills']} kills survived in {kill['attempts']} starts "
        f"(kill points: {', '.join(f'{k} {v}' for k, v in sorted(kill['kill_points'].items()))}); "
        f"{kill['runs']}/{ref['runs']} runs done; lost {len(kill['lost'])}, duplicated {len(kill['duplicated'])}, "
        f"metrics differing from the uninterrupted sweep {len(kill['mismatched'])}; store readable: {kill['store_readable']}; "
        f"{kill['seconds']} s in all |",
        f"| two runners on one store, released together | exit codes {two['exit_codes']}; trained {two['trained_by_each']} "
        f"and reused {two['reused_by_each']} (runner 1, runner 2); every run done exactly once: {two['done_exactly_once']}; "
        f"metrics identical: {two['metrics_identical']}; store readable: {two['store_readable']}; {two['seconds']} s |",
    ]
    if "malformed_recipes" in results:
        fz = results["malformed_recipes"]
        lines.append(f"| malformed recipes (hypothesis) | {fz['malformed_recipes']} recipes, each exit 2 with a one-line message and no traceback; {fz['seconds']} s |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
