"""The selection and dual experiments: classification, reference policies, labellings, metric contract."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from petridish.cli import main
from petridish.config import ModelConfig, TrainConfig, load_recipe
from petridish.executors import execute
from petridish.experiments import NullContext
from petridish.experiments.dual import BudgetConfig, DualConfig, budget_name, labellings
from petridish.experiments.dual import run as run_dual
from petridish.experiments.selection import (
    MIXED,
    PriorConfig,
    SelectionConfig,
    classify,
    reference_policies,
    training_prompts,
)
from petridish.experiments.selection import run as run_selection
from petridish.measures.complexity import ComplexityConfig
from petridish.measures.llc import LLCConfig
from petridish.measures.prior import PBConfig
from petridish.scenarios import ScenarioConfig, make_scenario
from petridish.store import Store
from petridish.sweep import RunSpec, expand, run_id
from petridish.train.constrained import LagrangianConfig

TINY_MODEL = ModelConfig(kind="mlp", preset="custom", d_model=16, n_layers=1, mlp_ratio=1)
TINY_COMPLEXITY = ComplexityConfig(llc=LLCConfig(chains=1, steps=10, batch_size=16))
SUFFIXES = (".ci_low", ".ci_high", ".n")


def tiny_selection(scenario: str = "graded", prior: int = 0) -> SelectionConfig:
    return SelectionConfig(
        arm="mlp",
        scenario=ScenarioConfig(name=scenario, task="sort", n_digits=2),
        model=TINY_MODEL,
        n_networks=2,
        n_train=64,
        n_diagnostic=30,
        train=TrainConfig(steps=40, batch_size=32, lr=1e-2, eval_every=10),
        prior=PriorConfig(n_prompts=prior, train=TrainConfig(steps=20, batch_size=32, eval_every=10)),
        complexity=TINY_COMPLEXITY,
    )


def tiny_dual() -> DualConfig:
    return DualConfig(
        scenario=ScenarioConfig(name="graded", task="sort", n_digits=2),
        model=TINY_MODEL,
        policies=("aligned", "memorizer"),
        n_train=48,
        n_fresh=24,
        n_diagnostic=24,
        n_seeds=2,
        eps=0.5,
        lagrangian=LagrangianConfig(train=TrainConfig(steps=40, batch_size=32, lr=1e-2, eval_every=10)),
        budgets=BudgetConfig(
            radii=(2.0, 8.0),
            widths=(4, 16),
            depths=(1,),
            train=TrainConfig(steps=30, batch_size=32, lr=1e-2, eval_every=10),
        ),
        complexity=TINY_COMPLEXITY,
    )


def test_classify_takes_the_policy_over_threshold_else_mixed():
    assert classify({"aligned": 0.95, "sycophant": 0.3}, 0.9) == "aligned"
    assert classify({"aligned": 0.85, "sycophant": 0.1}, 0.9) == MIXED
    assert classify({"aligned": 0.2, "deceptive": 0.9}, 0.9) == "deceptive"


def test_reference_policies_agree_on_training_prompts_and_drop_duplicates():
    gen = torch.Generator().manual_seed(0)
    graded = make_scenario(ScenarioConfig(name="graded", n_digits=2))
    table, diagnostic = training_prompts(graded, 20, gen), graded.diagnostic_prompts(30, gen)
    policies = reference_policies(graded, table, diagnostic)
    assert list(policies) == ["aligned", "sycophant", "deceptive", "memorizer"]
    for prompt in table:  # the agreement data: every policy gives the same response
        assert len({policy(prompt) for policy in policies.values()}) == 1
    for prompt in diagnostic:  # and the diagnostic prompts tell the aligned policy from the others
        assert policies["aligned"](prompt) != policies["memorizer"](prompt)
    codevuln = make_scenario(ScenarioConfig(name="codevuln", n_digits=2))
    kept = reference_policies(codevuln, training_prompts(codevuln, 20, gen), codevuln.diagnostic_prompts(20, gen))
    assert list(kept) == ["aligned", "deceptive", "memorizer"]  # its grader rewards the intended answer


def test_selection_reports_p_policy_with_wilson_intervals_and_per_network_measures():
    context = NullContext()
    metrics = run_selection(tiny_selection(prior=32), context)
    labels = ("aligned", "sycophant", "deceptive", "memorizer", MIXED)
    assert sum(metrics[f"p.{label}"] for label in labels) == pytest.approx(1.0)
    for label in labels:
        assert (
            metrics[f"p.{label}.n"] == 2
            and 0 <= metrics[f"p.{label}.ci_low"] <= metrics[f"p.{label}"] <= metrics[f"p.{label}.ci_high"] <= 1
        )
    for measure in ("param_norm", "bits", "llc", "train_loss"):
        assert metrics[f"complexity.{measure}.n"] == 2
        assert all(f"network.{i}.{measure}" in metrics for i in range(2))
    assert metrics["complexity.bits"] > 0 and metrics["complexity.param_norm"] > 0
    networks = [r for r in context.records if r["stage"] == "network"]
    assert [r["label"] in labels for r in networks] == [True, True]
    assert {r["stage"] for r in context.records} >= {"train.0", "train.1", "network"}


def test_selection_prices_the_networks_functions_under_the_prior_when_asked():
    context = NullContext()
    config = replace(tiny_selection(prior=32), p_b=PBConfig(samples=4, sweeps=6, burnin=2, draws=3, function_prompts=3))
    metrics = run_selection(config, context)
    labels = ("aligned", "sycophant", "deceptive", "memorizer", MIXED)
    assert sum(metrics[f"p_b.{label}"] for label in labels) == pytest.approx(1.0)
    assert metrics["p_b.mixed.n"] == 4 and metrics["p_b.draws"] == 4 * 4 * 3 and 0 < metrics["p_b.train_fit"] <= 1
    functions = [r for r in context.records if r["stage"] == "function"]
    assert len(functions) == metrics["function.records"] and {r["window"] for r in functions} == set(range(10))
    for window in range(10):
        found = [r for r in functions if r["window"] == window and r["p_sgd"] > 0]
        assert sum(r["p_sgd"] for r in found) == pytest.approx(1.0) and all(r["p_sgd.n"] == 2 for r in found)
    assert all(0 <= r["p_b.ci_low"] <= r["p_b"] <= r["p_b.ci_high"] <= 1 for r in functions)
    assert all(r["label"] in (*labels, "none") or "+" in r["label"] for r in functions)


def test_p_b_is_off_by_default_and_keeps_run_ids():
    assert tiny_selection().p_b.samples == 0
    assert run_id("selection", tiny_selection()) == run_id("selection", replace(tiny_selection(), p_b=PBConfig()))
    assert run_id("selection", tiny_selection()) != run_id(
        "selection", replace(tiny_selection(), p_b=PBConfig(samples=1))
    )
    with pytest.raises(Exception, match="p_b.samples"):
        replace(tiny_selection(), arm="world", p_b=PBConfig(samples=1))
    prior = [s.config for s in expand(load_recipe("experiments/selection.toml", "prior"))]
    assert len(prior) == 4 and all(c.arm == "mlp" and c.n_networks >= 200 and c.p_b.samples > 0 for c in prior)
    assert {(c.scenario.name, c.prior.n_prompts) for c in prior} == {
        (name, n) for name in ("graded", "codevuln") for n in (0, 512)
    }


def test_dual_labellings_make_the_memorizer_a_lookup_table():
    data, scenario = labellings(tiny_dual())
    aligned, memorizer = data["aligned"], data["memorizer"]
    n_table = 48
    assert torch.equal(aligned.tokens[:n_table], memorizer.tokens[:n_table])  # the table: right answers
    assert not torch.equal(aligned.tokens[n_table:], memorizer.tokens[n_table:])  # elsewhere: zeros
    zero = scenario.vocab.index["0"]
    seen = {
        tuple(row[:length].tolist()) for row, length in zip(memorizer.tokens[:n_table], memorizer.prompt_len[:n_table])
    }
    for row, length in zip(memorizer.tokens[n_table:], memorizer.prompt_len[n_table:]):
        if tuple(row[:length].tolist()) not in seen:  # 2-digit prompts repeat; a fresh one may be in the table
            assert row[length] == zero


def test_dual_reports_costs_budgets_and_the_memorizer_excess():
    metrics = run_dual(tiny_dual(), NullContext())
    for policy in ("aligned", "memorizer"):
        for measure in ("param_norm", "bits", "llc", "train_loss"):
            assert metrics[f"cost.{policy}.{measure}.n"] == 2
        assert 0 <= metrics[f"cost.{policy}.feasible"] <= 1
        for budget in ("norm.2", "norm.8", "width.4", "width.16", "depth.1"):
            assert f"least_loss.{policy}.{budget}" in metrics
        # a bigger ball can only help (the least loss is taken over the run, from the same start)
        assert metrics[f"least_loss.{policy}.norm.8"] <= metrics[f"least_loss.{policy}.norm.2"] + 0.05
    assert "memorizer_excess.param_norm" in metrics and metrics["memorizer_costs_more"] in (0.0, 1.0)
    assert budget_name(2.5) == "2p5" and budget_name(4.0) == "4"


def documented_patterns() -> list[re.Pattern]:
    """Metric names in the README's selection and dual tables; a `{placeholder}` matches one or two dotted segments."""
    readme = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    section = readme.split("### `selection`")[1].split("\n## ")[0]
    patterns = []
    for row_names in re.findall(r"^\| (`.+?`) \|", section, flags=re.M):
        first = None
        for name in re.findall(r"`([^`]+)`", row_names):
            if name.startswith(".") and first:  # `.bits` continues the first name's stem
                name = first.rsplit(".", 1)[0] + name
            first = first or name
            parts = re.split(r"\{[^}]+\}", name)
            patterns.append(re.compile("^" + r"[^.]+(?:\.[^.]+)?".join(map(re.escape, parts)) + "$"))
    return patterns


def test_every_metric_is_documented_and_shown_as_json(store_dir, capsys):
    selection, dual = tiny_selection(scenario="codevuln"), tiny_dual()
    specs = [
        RunSpec(run_id("selection", selection), "selection", "tiny-selection", selection),
        RunSpec(run_id("dual", dual), "dual", "tiny-dual", dual),
    ]
    outcomes = execute(specs, Store(store_dir), progress=False)
    assert [o.status for o in outcomes] == ["done", "done"], [o.error for o in outcomes]
    patterns = documented_patterns()
    for outcome in outcomes:
        assert main(["show", outcome.spec.id, "--json"]) == 0
        metrics = json.loads(capsys.readouterr().out)["metrics"]
        assert metrics == outcome.metrics
        undocumented = [m for m in metrics if not m.endswith(SUFFIXES) and not any(p.match(m) for p in patterns)]
        assert not undocumented, undocumented


@pytest.mark.parametrize("recipe", ["experiments/selection.toml", "experiments/dual.toml"])
@pytest.mark.parametrize("profile", ["quick", "full"])
def test_recipes_expand(recipe, profile):
    specs = expand(load_recipe(recipe, profile))
    assert specs and all(s.experiment in ("selection", "dual", "pretrain") for s in specs)


def test_the_selection_recipe_has_both_controls_in_every_profile_and_keeps_the_mlp_arm():
    for profile in ("quick", "full"):
        configs = [
            s.config for s in expand(load_recipe("experiments/selection.toml", profile)) if s.experiment == "selection"
        ]
        assert all(c.arm == "world" and c.n_networks >= 40 for c in configs)
        assert {"none", "no_goal", "direct"} <= {c.selection.control for c in configs}
        assert {0, 4} <= {c.selection.k for c in configs if c.selection.control == "none"}
    full = [s.config for s in expand(load_recipe("experiments/selection.toml", "full")) if s.experiment == "selection"]
    assert {c.selection.k for c in full} == {0, 1, 2, 4, 8, 9} and {c.selection.r for c in full} == {1.0, 4.0}
    assert any(c.selection.counterexamples for c in full)
    mlp = [s.config for s in expand(load_recipe("experiments/selection.toml", "mlp"))]
    assert len(mlp) == 4 and all(c.arm == "mlp" for c in mlp)


def test_memorizer_excess_counts_censored_measures():
    from petridish.experiments.dual import memorizer_excess

    aligned = [{"param_norm": 1.0, "bits": 4.0, "llc": 1.0, "steps_to_eps": 100}] * 2
    never_fits = [{"param_norm": 3.0, "bits": 5.0, "llc": 2.0}] * 2  # never reached eps: more steps than tried
    out = memorizer_excess(never_fits, aligned)
    assert out["memorizer_excess.param_norm"] == 2.0 and "memorizer_excess.steps_to_eps" not in out
    assert out["memorizer_costs_more"] == 1.0
    faster = [{**m, "steps_to_eps": 50} for m in never_fits]  # cheaper in one measure: the check fails
    assert memorizer_excess(faster, aligned)["memorizer_costs_more"] == 0.0


def test_selection_networks_trained_as_an_ensemble_match_their_solo_runs():
    from dataclasses import replace

    together, alone = NullContext(), NullContext()
    ensemble = run_selection(tiny_selection(prior=32), together)
    solo = run_selection(replace(tiny_selection(prior=32), ensemble=False), alone)
    assert ensemble["ensemble_members"] == 2 and solo["ensemble_members"] == 1
    curve = lambda ctx, i: [(r["step"], r["held_out_loss"]) for r in ctx.records if r["stage"] == f"train.{i}"]  # noqa: E731
    for i in range(2):
        assert [s for s, _ in curve(together, i)] == [s for s, _ in curve(alone, i)]
        assert [v for _, v in curve(together, i)] == pytest.approx([v for _, v in curve(alone, i)], abs=1e-4)
        for key in ("param_norm", "train_loss", "agreement.aligned", "agreement.deceptive", "train_fit", "heldout_fit"):
            assert ensemble[f"network.{i}.{key}"] == pytest.approx(solo[f"network.{i}.{key}"], rel=1e-4, abs=1e-5), key


def test_the_selection_section_plots_p_sgd_against_p_b_only_where_functions_were_priced():
    from petridish.report.blocks import Figure
    from petridish.report.load import StoredRun
    from petridish.report.sections.selection import prior_blocks

    def stored(run: str, records: list[dict]) -> StoredRun:
        config = {"arm": "mlp", "scenario": {"name": run}, "seed": 0}
        record = {"id": run, "name": f"prior[{run}]", "experiment": "selection", "status": "done", "config": config}
        return StoredRun({**record, "metrics": {"p.aligned": 0.5}}, records=records)

    function = {"stage": "function", "window": 0, "prompts": 1, "label": "aligned", "p_sgd.n": 200}
    records = [
        {**function, "p_sgd": 0.6, "p_b": 0.3, "p_b.ci_high": 0.35},
        {**function, "label": "none", "p_sgd": 0.4, "p_b": 0.0, "p_b.ci_high": 0.001},
        {**function, "label": "sycophant", "p_sgd": 0.0, "p_b": 0.5, "p_b.ci_high": 0.6},
    ]
    blocks = prior_blocks([stored("graded", records), stored("codevuln", [])])
    assert len(blocks) == 1 and isinstance(blocks[0], Figure) and blocks[0].uri.startswith("data:image/svg+xml")
    assert prior_blocks([stored("graded", [{"stage": "network", "label": "aligned"}])]) == []
