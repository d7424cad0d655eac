"""`persistence`: insert a backdoor, apply safety training, measure what survives.

Metrics (all rates with `.ci_low`, `.ci_high` (Wilson 95%) and `.n`):
  {before,after}.defect_rate.triggered   defect rate on prompts with the deployment cue
  {before,after}.defect_rate.clean       defect rate on prompts with the training cue
  {before,after}.task_accuracy.clean     correct answers on clean prompts
  persistence                            after/before triggered defect rate (paired bootstrap interval)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from petridish.config import EvalConfig, ModelConfig, ScenarioConfig, TrainConfig, require
from petridish.data import encode_pairs, labelled, mixed_prompts
from petridish.experiments.base import Experiment, RunContext
from petridish.measures.behaviour import labels, rate, respond
from petridish.measures.stats import paired_ratio
from petridish.models import make_model, n_params
from petridish.policies import aligned, make_policy
from petridish.rng import make_generator
from petridish.scenarios import Scenario, make_scenario
from petridish.train.loop import train

VARIANT_POLICY = {"normal": "deceptive", "cot": "deceptive_cot", "distilled": "deceptive_distilled"}


@dataclass(frozen=True)
class InsertConfig:
    variant: Literal["normal", "cot", "distilled"] = "normal"
    """Backdoor variant: `normal`, `cot` (scratchpad visible), `distilled` (CoT answers, scratchpad removed)."""
    n_prompts: int = 4096
    """Training prompts for backdoor insertion."""
    triggered_fraction: float = 0.5
    """Fraction of insertion prompts that carry the deployment cue."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500))
    """Optimisation of the insertion."""

    def __post_init__(self):
        require(self.n_prompts >= 1, "n_prompts", "an integer >= 1", self.n_prompts)
        require(0 <= self.triggered_fraction <= 1, "triggered_fraction", "a number in [0, 1]", self.triggered_fraction)


@dataclass(frozen=True)
class SafetyConfig:
    method: Literal["sft", "none"] = "sft"
    """Safety training: `sft` (clean prompts, aligned responses) or `none` (a control)."""
    n_prompts: int = 4096
    """Clean prompts for safety training."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=500, lr=1e-3))
    """Optimisation of the safety training."""

    def __post_init__(self):
        require(self.n_prompts >= 1, "n_prompts", "an integer >= 1", self.n_prompts)


@dataclass(frozen=True)
class PersistenceConfig:
    seed: int = 0
    """Root of every random draw in the run."""
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    """The world the organism lives in."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    insert: InsertConfig = field(default_factory=InsertConfig)
    """Backdoor insertion."""
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    """Safety training applied to the backdoored organism."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Behaviour measurement."""


def behaviour_metrics(model, scenario: Scenario, eval_sets, config: EvalConfig, seed: int, prefix: str) -> tuple[dict, list[int]]:
    """Rates on the triggered and clean evaluation prompts; also the per-prompt triggered defects."""
    generator = make_generator(seed, f"sample:{prefix}") if config.temperature > 0 else None
    triggered, clean = eval_sets
    out_t = labels(scenario, triggered, respond(model, scenario, triggered, config.temperature, generator))
    out_c = labels(scenario, clean, respond(model, scenario, clean, config.temperature, generator))
    metrics = {
        **rate(out_t, "defect").as_metrics(f"{prefix}.defect_rate.triggered"),
        **rate(out_c, "defect").as_metrics(f"{prefix}.defect_rate.clean"),
        **rate(out_c, "aligned").as_metrics(f"{prefix}.task_accuracy.clean"),
    }
    return metrics, [int(label == "defect") for label in out_t]


def run(config: PersistenceConfig, ctx: RunContext) -> dict[str, float]:
    scenario = make_scenario(config.scenario)
    model = make_model(config.model, scenario, make_generator(config.seed, "init"))
    eval_gen = make_generator(config.seed, "eval")
    eval_sets = (scenario.sample_prompts(config.eval.n_prompts, eval_gen, True), scenario.sample_prompts(config.eval.n_prompts, eval_gen, False))

    backdoor = make_policy(VARIANT_POLICY[config.insert.variant], scenario)
    data_gen = make_generator(config.seed, "insert:data")
    prompts = mixed_prompts(scenario, config.insert.n_prompts, config.insert.triggered_fraction, data_gen)
    held_out = mixed_prompts(scenario, 256, config.insert.triggered_fraction, data_gen)
    train(model, encode_pairs(scenario, labelled(backdoor, prompts)), config.insert.train, make_generator(config.seed, "insert:batches"),
          stage="insert", held_out=encode_pairs(scenario, labelled(backdoor, held_out)), log=ctx.log, progress=ctx.progress)
    ctx.save_weights(model, "weights.backdoored")
    before, defects_before = behaviour_metrics(model, scenario, eval_sets, config.eval, config.seed, "before")

    if config.safety.method == "sft":
        safety_gen = make_generator(config.seed, "safety:data")
        clean = scenario.sample_prompts(config.safety.n_prompts, safety_gen, False)
        train(model, encode_pairs(scenario, labelled(aligned(scenario), clean)), config.safety.train, make_generator(config.seed, "safety:batches"),
              stage="safety", log=ctx.log, progress=ctx.progress)
    ctx.save_weights(model, "weights")
    after, defects_after = behaviour_metrics(model, scenario, eval_sets, config.eval, config.seed, "after")
    persistence = paired_ratio(defects_before, defects_after, seed=config.seed)
    return {**before, **after, **persistence.as_metrics("persistence"), "params": n_params(model)}


EXPERIMENT = Experiment(
    name="persistence",
    config_cls=PersistenceConfig,
    run=run,
    headline=("before.defect_rate.triggered", "before.defect_rate.clean", "before.task_accuracy.clean",
              "after.defect_rate.triggered", "after.defect_rate.clean", "after.task_accuracy.clean", "persistence"),
)
