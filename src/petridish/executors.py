"""Executors run RunSpecs and hand their outputs to the driver, which alone writes the store.

    execute(specs, store, executor)      the driver: skip done runs, claim, dispatch, commit
      Driver.next_work()                 the one place where specs become units of work
      executor.submit(work) / wait()     InlineExecutor (this process), PoolExecutor (--jobs N),
                                         RayExecutor (Ray core tasks, --executor ray)
        run_work(work) -> [RunOutput]    what a worker calls: run_spec for each spec of the unit

A unit of work (`Work`) is a tuple of specs that one worker trains in one task. A family with a
`run_many` gets its specs grouped: those whose configs differ only in the family's `member_fields`
(seed, learning rate, ...) go out as one unit, spread over the executor's slots, and are trained
together (train/engine.py); each run's provenance records `ensemble: {members, group}`. Every
run gets DEFAULT_THREADS torch threads unless `--threads` says otherwise (recorded in provenance).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

from petridish import extras
from petridish.config import flatten, to_dict
from petridish.errors import BadInput, RunFailed
from petridish.experiments import EXPERIMENTS
from petridish.store import Claim, RunOutput, Store, load_run_weights
from petridish.sweep import RunSpec

Work = tuple[RunSpec, ...]
"""Specs that one worker trains in one task."""
POLL_SECONDS = 0.2
"""How often a driver looks again at runs that another runner has claimed."""
MAX_MEMBERS = 64
"""Most specs trained together in one unit of work."""
DEFAULT_THREADS = 1
"""Torch intra-op threads per run, whatever executes it: a run's numbers then do not depend on the
executor, tiny models gain little from a second thread, and one thread cannot spin against another
process on a shared core. Parallelism comes from runs (--jobs, Ray) and ensemble members instead."""


class CollectingContext:
    """The RunContext executors give experiments: keeps records and weights for the driver, and
    streams records to `live_dir/metrics.jsonl` when the driver shares the worker's disk. Runs that
    require others read their weights from the store at `store_root` (read only: the driver writes)."""

    def __init__(self, progress: bool = False, live_dir: Path | None = None, store_root: Path | None = None):
        self.progress, self.live_dir, self.store_root = progress, live_dir, store_root
        self.records: list[dict] = []
        self.weights: dict[str, dict] = {}
        self.samples: list[dict] = []

    def log(self, record: dict) -> None:
        self.records.append(record)
        if self.live_dir is not None:
            with open(self.live_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def save_weights(self, model: torch.nn.Module, name: str = "weights") -> None:
        self.weights[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def save_samples(self, name: str, rows: list[dict]) -> None:
        self.samples.extend({"evaluation": name, **row} for row in rows)

    def load_weights(self, experiment: str, config, model: torch.nn.Module, name: str = "weights") -> None:
        load_run_weights(self.store_root, experiment, config, model, name)


def run_spec(
    spec: RunSpec, progress: bool = False, live_dir: Path | None = None, store_root: Path | None = None
) -> RunOutput:
    """Run one spec to completion; failures come back as data, never as exceptions."""
    ctx = CollectingContext(progress, live_dir, store_root)
    threads = torch.get_num_threads()
    result: dict | Exception
    try:
        result = EXPERIMENTS[spec.experiment].run(spec.config, ctx)
    except Exception as error:  # recorded with its traceback; the sweep goes on
        result = error
    return _output(result, ctx, threads)


def run_together(
    work: Work, progress: bool = False, live_dirs: Sequence[Path | None] = (), store_root: Path | None = None
) -> list[RunOutput]:
    """Specs that differ only in their family's member fields, trained at once by its `run_many`."""
    contexts = [
        CollectingContext(progress, live_dir, store_root) for live_dir in (list(live_dirs) or [None] * len(work))
    ]
    threads, ensemble = torch.get_num_threads(), {"members": len(work), "group": [spec.id for spec in work]}
    run_many = EXPERIMENTS[work[0].experiment].run_many
    assert run_many is not None  # run_work groups only families that have one
    results: list[dict[str, float] | Exception]
    try:
        results = run_many([spec.config for spec in work], contexts)
    except Exception as error:  # the whole group failed: every member says why
        results = [error] * len(work)
    return [_output(result, ctx, threads, ensemble) for result, ctx in zip(results, contexts)]


def _output(result: dict | Exception, ctx: CollectingContext, threads: int, ensemble: dict | None = None) -> RunOutput:
    """A run's metrics, or the exception that ended it, as the RunOutput the driver commits."""
    if isinstance(result, dict):
        bad = [k for k, v in result.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if not bad:
            return RunOutput(
                metrics=result,
                records=ctx.records,
                weights=ctx.weights,
                samples=ctx.samples,
                torch_threads=threads,
                ensemble=ensemble,
            )
        result = TypeError(f"metric {bad[0]!r} is not a number")
    if isinstance(result, RunFailed):
        return RunOutput(
            records=ctx.records, samples=ctx.samples, error=str(result), torch_threads=threads, ensemble=ensemble
        )
    trace = "".join(traceback.format_exception(result))
    return RunOutput(
        records=ctx.records,
        samples=ctx.samples,
        error=f"{type(result).__name__}: {result}",
        traceback=trace,
        torch_threads=threads,
        ensemble=ensemble,
    )


def run_work(
    work: Work,
    threads: int | None = None,
    progress: bool = False,
    live_dirs: Sequence[Path | None] = (),
    store_root: Path | None = None,
) -> list[RunOutput]:
    """What a worker does with one unit of work: one RunOutput per spec, in order. `store_root` is
    where runs that require others read them."""
    if threads is not None:
        torch.set_num_threads(threads)
    if len(work) > 1 and EXPERIMENTS[work[0].experiment].run_many is not None:
        return run_together(work, progress, live_dirs, store_root)
    dirs = list(live_dirs) or [None] * len(work)
    return [run_spec(spec, progress, live_dir, store_root) for spec, live_dir in zip(work, dirs)]


def ensemble_key(spec: RunSpec) -> str | None:
    """Specs with one key can train together: one family with a run_many, configs equal but for its member fields."""
    experiment = EXPERIMENTS[spec.experiment]
    if experiment.run_many is None:
        return None
    fields = experiment.member_fields
    shared = {
        k: v
        for k, v in flatten(to_dict(spec.config)).items()
        if not any(k == f or k.startswith(f + ".") for f in fields)
    }
    return json.dumps([spec.experiment, shared], sort_keys=True)


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    spec: RunSpec
    status: str
    """`done` (trained now), `reused` (found finished in the store) or `failed`."""
    metrics: dict = field(default_factory=dict)
    error: str | None = None


class Driver:
    """Decides what to run next and commits what comes back; holds the claims in between."""

    def __init__(
        self, specs: Sequence[RunSpec], store: Store, on_outcome: Callable[[Outcome], None] | None, rerun: bool = False
    ):
        self.store, self.on_outcome = store, on_outcome
        self.todo: deque[RunSpec] = deque(with_requirements(specs))
        required = {r.id for spec in specs for r in spec.requires}  # a recipe's expansion lists its bases too
        self.rerun = {spec.id for spec in specs} - required if rerun else set()
        """Runs to redo although they are done (`--rerun`): the sweep's own, not the runs they require."""
        self.elsewhere: list[RunSpec] = []
        """Specs claimed by another runner: looked at again once nothing else is left."""
        self.waiting: list[RunSpec] = []
        """Specs whose required runs are not done yet: looked at again after each commit."""
        self.claims: dict[str, Claim] = {}
        self.partials: dict[str, Path] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.slots = 1
        """Units the executor runs at once: an ensemble is split over them so no slot sits idle."""

    def next_work(self) -> Work | None:
        """The next unit to dispatch, with its claims taken; None when none can be dispatched now."""
        while self.todo:
            spec = self.todo.popleft()
            ready = self._requirements(spec)
            if ready is False:
                self.waiting.append(spec)
            elif isinstance(ready, str):
                self._finish(Outcome(spec, "failed", error=ready))
            elif self._take(spec):
                return (spec, *self._members_with(spec))
        return None

    def _requirements(self, spec: RunSpec) -> bool | str:
        """True when every run `spec` requires is done (now or before), False while one is not yet,
        and the reason when one failed."""
        for required in spec.requires:
            if required.config is None and not self.store.is_done(required.id):  # named by id: nothing here can make it
                return f"required run {required.id} ({required.experiment}) is not done in the store {self.store.root}"
            outcome = self.outcomes.get(required.id)
            if outcome is not None and outcome.status == "failed":
                return f"required run {required.name} ({required.id}) failed: {outcome.error}"
            if outcome is None and not self.store.is_done(required.id):
                return False
        return True

    def _take(self, spec: RunSpec) -> bool:
        """Claim `spec` for this runner; False when it is done or another runner holds it."""
        redo = spec.id in self.rerun
        if self.store.is_done(spec.id) and not redo:
            self._finish(Outcome(spec, "reused", self.store.metrics(spec.id)))
            return False
        claim = self.store.claim(spec.id)
        if claim is None:
            self.elsewhere.append(spec)
            return False
        self.rerun.discard(spec.id)  # redone once, by us; a later look finds it done
        if self.store.is_done(spec.id) and not redo:  # finished by another runner between our look and our claim
            claim.release()
            self._finish(Outcome(spec, "reused", self.store.metrics(spec.id)))
            return False
        self.claims[spec.id] = claim
        self.partials[spec.id] = self.store.new_partial(spec.id)
        return True

    def _members_with(self, first: RunSpec) -> list[RunSpec]:
        """Waiting specs that can train together with `first`, claimed; a 1/slots share of them."""
        key = ensemble_key(first)
        if key is None:
            return []
        same = [spec for spec in self.todo if ensemble_key(spec) == key and self._requirements(spec) is True]
        share = min(MAX_MEMBERS, -(-(len(same) + 1) // self.slots)) - 1  # ceil((n + 1) / slots) - 1
        for spec in same[:share]:
            self.todo.remove(spec)
        return [spec for spec in same[:share] if self._take(spec)]

    def live_dirs(self, work: Work) -> list[Path]:
        return [self.partials[spec.id] for spec in work]

    def commit(self, work: Work, outputs: Sequence[RunOutput]) -> None:
        for spec, output in zip(work, outputs):
            status = self.store.commit(spec, to_dict(spec.config), output, self.partials.pop(spec.id))
            self.claims.pop(spec.id).release()
            self._finish(Outcome(spec, status, output.metrics, output.error))
        self.todo.extendleft(reversed(self.waiting))  # a required run may be done now
        self.waiting.clear()

    def retry_elsewhere(self) -> bool:
        """Put runs claimed elsewhere, and runs waiting for them, back in line (after a pause); False
        when there are none."""
        if not self.elsewhere:
            for spec in self.waiting:  # nothing in flight or elsewhere can finish what they wait for
                self._finish(Outcome(spec, "failed", error="a required run was neither done nor run"))
            self.waiting.clear()
            return False
        time.sleep(POLL_SECONDS)
        self.todo.extend(self.elsewhere + self.waiting)
        self.elsewhere.clear()
        self.waiting.clear()
        return True

    def release_all(self) -> None:
        for claim in self.claims.values():
            claim.release()
        self.claims.clear()

    def _finish(self, outcome: Outcome) -> None:
        self.outcomes[outcome.spec.id] = outcome
        if self.on_outcome:
            self.on_outcome(outcome)


def execute(
    specs: Sequence[RunSpec],
    store: Store,
    progress: bool = True,
    on_outcome: Callable[[Outcome], None] | None = None,
    executor: "Executor | None" = None,
    rerun: bool = False,
) -> list[Outcome]:
    """Run every spec not already done (in the store, or by another runner on it); outcomes in spec order.
    `rerun` redoes the specs' own runs even when they are done (a finished run is replaced when its redo commits).

    Ctrl-C (KeyboardInterrupt) cancels the runs in flight, releases their claims and propagates:
    finished runs are committed, the rest are redone by the next `execute`.
    """
    executor = executor or InlineExecutor(progress=progress)
    store.reconcile()
    driver = Driver(specs, store, on_outcome, rerun)
    executor.store_root = store.root  # where runs that require others read them
    try:
        with executor:
            _drive(driver, executor)
    finally:
        driver.release_all()
    return [driver.outcomes[spec.id] for spec in specs]


def with_requirements(specs: Sequence[RunSpec]) -> list[RunSpec]:
    """`specs` with the runs they require (at any depth) placed before their first dependent, once each."""
    out: dict[str, RunSpec] = {}

    def add(spec: RunSpec) -> None:
        for required in spec.requires:
            if required.id not in out and required.config is not None:  # one named by id is looked up, never run
                add(required)
        out.setdefault(spec.id, spec)

    for spec in specs:
        add(spec)
    return list(out.values())


def _drive(driver: Driver, executor: "Executor") -> None:
    driver.slots = executor.slots
    while True:
        while executor.in_flight() < executor.slots:
            work = driver.next_work()
            if work is None:
                break
            executor.submit(work, driver.live_dirs(work))
        if executor.in_flight():
            for work, outputs in executor.wait():
                driver.commit(work, outputs)
        elif not driver.retry_elsewhere():
            return


# ---------------------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------------------


class Executor(Protocol):
    slots: int
    """Units of work in flight at once."""
    store_root: Path | None
    """The store runs read required runs from (set by `execute`)."""

    def __enter__(self) -> "Executor": ...

    def __exit__(self, kind, error, trace) -> None:
        """Shut down; on an exception (Ctrl-C included) cancel whatever is in flight."""

    def submit(self, work: Work, live_dirs: Sequence[Path]) -> None: ...

    def in_flight(self) -> int: ...

    def wait(self) -> list[tuple[Work, list[RunOutput]]]:
        """Block until at least one unit finished; return every finished unit."""


class InlineExecutor:
    """Runs each unit in this process, when the driver waits for it (progress bars work here)."""

    slots = 1
    store_root: Path | None = None

    def __init__(self, progress: bool = False, threads: int | None = None):
        self.progress, self.threads = progress, threads or DEFAULT_THREADS
        self.queue: deque[tuple[Work, Sequence[Path]]] = deque()

    def __enter__(self):
        self.saved_threads = torch.get_num_threads()
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved_threads)
        self.queue.clear()

    def submit(self, work, live_dirs):
        self.queue.append((work, live_dirs))

    def in_flight(self) -> int:
        return len(self.queue)

    def wait(self):
        work, live_dirs = self.queue.popleft()
        return [(work, run_work(work, self.threads, self.progress, live_dirs, self.store_root))]


class PoolExecutor:
    """A pool of `jobs` worker processes on this machine (spawned: no inherited locks or threads)."""

    def __init__(self, jobs: int, threads: int | None = None):
        self.slots = jobs
        self.threads = threads or DEFAULT_THREADS
        self.futures: dict[Future, Work] = {}
        self.store_root: Path | None = None

    def __enter__(self):
        self.pids = multiprocessing.get_context("spawn").SimpleQueue()
        self.pool = self._new_pool()
        return self

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.slots,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(), self.threads, self.pids),
        )

    def __exit__(self, kind, error, trace):
        if kind is None:
            self.pool.shutdown(wait=True)
            return
        # Stop runs in flight now, not when they finish. A worker still starting up is first let
        # finish starting (it reports its pid): killed mid-start, or left alone while the driver
        # exits, it would print a traceback or hold the driver's exit.
        starting = {process.pid for process in (getattr(self.pool, "_processes", None) or {}).values()}
        self.pool.shutdown(wait=False, cancel_futures=True)
        reported, deadline = set(self._worker_pids()), time.monotonic() + 10
        while not starting <= reported and time.monotonic() < deadline:
            time.sleep(0.05)
            reported |= set(self._worker_pids())
        for pid in reported | starting:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _worker_pids(self) -> list[int]:
        pids = []
        while not self.pids.empty():
            pids.append(self.pids.get())
        return pids

    def submit(self, work, live_dirs):
        with _sigint_held():  # workers start inside submit
            self.futures[self.pool.submit(run_work, work, self.threads, False, (), self.store_root)] = work

    def in_flight(self) -> int:
        return len(self.futures)

    def wait(self):
        finished, _ = wait_futures(self.futures, return_when=FIRST_COMPLETED)
        results = []
        for future in finished:
            work = self.futures.pop(future)
            results.append((work, _outputs(future, work)))
        if any(isinstance(f.exception(), BrokenProcessPool) for f in finished):
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()  # the rest of the sweep goes on in fresh workers
        return results


@contextlib.contextmanager
def _sigint_held():
    """Hold a Ctrl-C while workers start, then deliver it. Spawned children inherit this thread's
    blocked SIGINT across exec, so one that lands while a worker is still importing stays pending
    there and is dropped once its initializer ignores SIGINT (no traceback from it). In the driver,
    other threads do not block SIGINT, so a deferring handler catches it there: raising mid-spawn
    would leave a child without its start-up data (an ignored SIGINT would lose the Ctrl-C)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held: list[int] = []
    handler = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a Ctrl-C pending on this thread lands in `held`
        signal.signal(signal.SIGINT, handler)
    if held and callable(handler):
        handler(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt


def _outputs(future: Future, work: Work) -> list[RunOutput]:
    """A unit's outputs; a worker that died (killed, out of memory) fails each of its runs."""
    error = future.exception()
    if error is None:
        return future.result()
    return [RunOutput(error=f"worker process died ({type(error).__name__}: {error})")] * len(work)


def _init_worker(driver_pid: int, threads: int, pids) -> None:
    """A pool worker: one torch thread count, Ctrl-C left to the driver, gone when the driver is."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # drops a Ctrl-C held pending since the fork
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    torch.set_num_threads(threads)
    pids.put(os.getpid())
    _die_with_parent()

    def exit_with_driver():  # where prctl is missing (not Linux): notice the driver's death by polling
        while os.getppid() == driver_pid:
            time.sleep(1.0)
        os._exit(1)  # the driver was killed: nobody will read our results

    threading.Thread(target=exit_with_driver, daemon=True).start()


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker the moment the driver dies (PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


class RayExecutor:
    """Ray core tasks, one unit of work per task (1 CPU each). Connects to `address` (or RAY_ADDRESS)
    when given, else starts a local Ray with `num_cpus` CPUs and stops it at the end."""

    def __init__(
        self, address: str | None = None, num_cpus: int | None = None, slots: int | None = None, threads: int = 1
    ):
        self.address, self.num_cpus, self.requested_slots, self.threads = address, num_cpus, slots, threads
        self.refs: dict = {}
        self.store_root: Path | None = None

    def __enter__(self):
        ray = extras.require("ray", "ray", "--executor ray")
        self.ray = ray
        self.initialised_here = not ray.is_initialized()
        if self.initialised_here:
            _ray_init(ray, self.address, self.num_cpus)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = self.requested_slots or max(1, cpus)
        self.remote = ray.remote(num_cpus=1, max_retries=0)(run_work)
        return self

    def __exit__(self, kind, error, trace):
        if kind is not None:
            for ref in self.refs:
                self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.initialised_here:
            self.ray.shutdown()

    def submit(self, work, live_dirs):
        self.refs[self.remote.remote(work, self.threads, False, (), self.store_root)] = work

    def in_flight(self) -> int:
        return len(self.refs)

    def wait(self):
        ready, _ = self.ray.wait(list(self.refs), num_returns=1)
        results = []
        for ref in ready:
            work = self.refs.pop(ref)
            try:
                results.append((work, self.ray.get(ref)))
            except self.ray.exceptions.RayError as error:  # a worker died or the task was lost
                reason = f"ray task failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
                results.append((work, [RunOutput(error=reason)] * len(work)))
        return results


def _ray_init(ray, address: str | None, num_cpus: int | None) -> None:
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    except Exception as error:  # Ray raises ConnectionError, RuntimeError, ValueError... for a bad address
        where = f"--ray-address {address!r}" if address else "--executor ray"
        raise BadInput(
            f"{where}: cannot start or reach Ray ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None


def _check_reachable(address: str) -> None:
    """Fail fast on an address nothing listens at: Ray itself retries one for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # `auto`, `local` and other forms Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        raise BadInput(
            f"--ray-address {address!r}: nothing answers there ({error.strerror or type(error).__name__})"
        ) from None


def make_executor(
    kind: str,
    jobs: int | None = None,
    ray_address: str | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> Executor:
    """The executor the CLI's `--executor`, `--jobs`, `--ray-address` and `--threads` ask for."""
    if jobs is not None and jobs < 1:
        raise BadInput(f"--jobs {jobs}: expected an integer >= 1")
    if threads is not None and threads < 1:
        raise BadInput(f"--threads {threads}: expected an integer >= 1")
    if kind == "local":
        return PoolExecutor(jobs, threads) if jobs and jobs > 1 else InlineExecutor(progress, threads)
    if kind == "ray":
        return RayExecutor(ray_address, num_cpus=jobs, slots=jobs, threads=threads or DEFAULT_THREADS)
    raise BadInput(f"--executor {kind!r}: expected local or ray")
