"""What an experiment family is, and what it may ask of the run that hosts it.

Experiments never import the store: the store hands them a RunContext.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch


class RunContext(Protocol):
    progress: bool
    """Show progress bars."""

    def log(self, record: dict) -> None:
        """Append one record to the run's metrics.jsonl."""

    def save_weights(self, model: torch.nn.Module, name: str = "weights") -> None:
        """Save `model` as `<name>.safetensors` in the run directory."""

    def load_weights(self, experiment: str, config: object, model: torch.nn.Module, name: str = "weights") -> None:
        """Load `<name>.safetensors` of the finished run (`experiment`, `config` or its run id), one
        this run `requires`, from the store into `model`."""

    def save_samples(self, name: str, rows: list[dict]) -> None:
        """Keep transcripts behind a rate: `rows` of {condition, prompt, response, label, ...} from the
        evaluation `name`, written to the run's samples.jsonl (one object per line, `evaluation` = name)."""


class NullContext:
    """A RunContext that keeps nothing (tests, notebooks). It reads no store: a run that requires
    others needs `executors.CollectingContext(store_root=...)`."""

    progress = False

    def __init__(self):
        self.records: list[dict] = []
        self.samples: list[dict] = []

    def log(self, record: dict) -> None:
        self.records.append(record)

    def save_weights(self, model: torch.nn.Module, name: str = "weights") -> None:
        pass

    def load_weights(self, experiment: str, config: object, model: torch.nn.Module, name: str = "weights") -> None:
        raise ValueError(
            f"NullContext reads no store, so it cannot load the required {experiment} run; use executors.CollectingContext(store_root=...)"
        )

    def save_samples(self, name: str, rows: list[dict]) -> None:
        self.samples.extend({"evaluation": name, **row} for row in rows)


SAMPLES_PER_CONDITION = 24
"""Transcripts kept per evaluation condition (the first ones: evaluation prompts are already a random draw)."""


def transcripts(
    condition: str,
    prompts: Sequence,
    responses: Sequence,
    labels: Sequence[str],
    n: int = SAMPLES_PER_CONDITION,
    **extra,
) -> list[dict]:
    """Rows for `save_samples`: the first `n` prompts (objects with `.tokens`) with their responses and labels, as text."""
    return [
        {"condition": condition, "prompt": " ".join(p.tokens), "response": " ".join(r), "label": label, **extra}
        for p, r, label in list(zip(prompts, responses, labels))[:n]
    ]


def run_alone(
    run_many: Callable[[Sequence[Any], Sequence[RunContext]], list], config: Any, ctx: RunContext
) -> dict[str, float]:
    """A family's `run` for a family with a `run_many`: one member, its exception raised."""
    (result,) = run_many([config], [ctx])
    if isinstance(result, Exception):
        raise result
    return result


@dataclass(frozen=True)
class Experiment:
    name: str
    config_cls: type
    run: Callable[[Any, RunContext], dict[str, float]]
    """config, context -> flat metrics {dotted name: number}."""
    headline: tuple[str, ...] = ()
    """Metric names to show in the CLI's summary table."""
    run_many: Callable[[Sequence[Any], Sequence[RunContext]], list[dict[str, float] | Exception]] | None = None
    """Optional: run configs that differ only in `member_fields` together (as ensembles, train/engine.py),
    one result per config: its metrics, or the exception that failed it. Executors group such specs.
    A member's numbers must be the ones it gets alone, so that grouping never changes a stored result."""
    version: int = 0
    """The family's own version, beside the global `CONFIG_VERSION`: bump it, with a line in CHANGELOG.md,
    when a default or the computation of this family alone changes, so that its finished runs are not
    reused while every other family keeps its ids. 0 adds nothing to the id."""
    member_fields: tuple[str, ...] = ("seed",)
    """Dotted config keys (or tables: `safety` covers `safety.*`) in which the members of one `run_many`
    call may differ."""
    requires: Callable[[Any], list[tuple[str, object]]] | None = None
    """Optional: config -> the runs this run reads, as (experiment name, config) (a stored base organism),
    or (experiment name, run id) for a run that must already be done in the store.
    The driver runs those first (or finds them done) and dispatches this run only once they are done;
    the run reads them through `RunContext.load_weights`."""
