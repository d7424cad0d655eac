"""Executors run RunSpecs and hand their outputs to the driver, which alone writes the store."""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from petridish.config import to_dict
from petridish.errors import RunFailed
from petridish.experiments import EXPERIMENTS
from petridish.store import RunOutput, Store
from petridish.sweep import RunSpec


class CollectingContext:
    """The RunContext executors give experiments: keeps records and weights for the driver, and
    streams records to `live_dir/metrics.jsonl` when the driver shares the worker's disk."""

    def __init__(self, progress: bool = False, live_dir: Path | None = None):
        self.progress, self.live_dir = progress, live_dir
        self.records: list[dict] = []
        self.weights: dict[str, dict] = {}

    def log(self, record: dict) -> None:
        self.records.append(record)
        if self.live_dir is not None:
            with open(self.live_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def save_weights(self, model: torch.nn.Module, name: str = "weights") -> None:
        self.weights[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_spec(spec: RunSpec, progress: bool = False, live_dir: Path | None = None) -> RunOutput:
    """Run one spec to completion; failures come back as data, never as exceptions."""
    ctx = CollectingContext(progress, live_dir)
    try:
        metrics = EXPERIMENTS[spec.experiment].run(spec.config, ctx)
        bad = [k for k, v in metrics.items() if not isinstance(v, (int, float))]
        if bad:
            raise TypeError(f"metric {bad[0]!r} is not a number")
        return RunOutput(metrics=metrics, records=ctx.records, weights=ctx.weights)
    except RunFailed as error:
        return RunOutput(records=ctx.records, error=str(error))
    except Exception as error:  # recorded with its traceback; the sweep goes on
        return RunOutput(records=ctx.records, error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())


@dataclass
class Outcome:
    spec: RunSpec
    status: str
    """`done` (trained now), `reused` (found finished in the store) or `failed`."""
    metrics: dict = field(default_factory=dict)
    error: str | None = None


def execute(specs: Sequence[RunSpec], store: Store, progress: bool = True, on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run every spec not already done, one after another in this process."""
    outcomes = []
    for spec in specs:
        if store.is_done(spec.id):
            metrics = json.loads((store.run_dir(spec.id) / "metrics.json").read_text())
            outcome = Outcome(spec, "reused", metrics)
        else:
            partial = store.new_partial(spec.id)
            output = run_spec(spec, progress, live_dir=partial)
            status = store.commit(spec, to_dict(spec.config), output, partial)
            outcome = Outcome(spec, status, output.metrics, output.error)
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)
    return outcomes
