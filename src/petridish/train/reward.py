"""A learned reward model: a small transformer trained on preference pairs (Bradley-Terry).

The pairs are two candidate answers to one clean prompt (the right answer, answers with one or two
wrong digits, a random answer, a truncated or padded one, the scenario's defect); the preferred one is
the one the scenario's helpfulness grader scores higher, a stand-in for human labels. Like the grader,
the model reads the prompt and the answer only, never a scratchpad. It trains through the engine,
`train.engine.train`, with `BradleyTerry` as its objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn

from petridish.config import MODEL_PRESETS, PresetName, TrainConfig, require
from petridish.data import Sequences, encode_pairs
from petridish.models.transformer import Transformer, TransformerShape
from petridish.scenarios import Prompt, Scenario, Tokens, strip_scratchpad
from petridish.train.engine import Ensemble, Logger, stack, train_together

RewardFn = Callable[[Sequence[Prompt], Sequence[Tokens]], torch.Tensor]
"""(prompts, responses without <eos>) -> rewards (N,); never sees a scratchpad."""


def grader_reward(scenario: Scenario) -> RewardFn:
    """The programmatic preference model: the scenario's helpfulness grade (it strips the scratchpad)."""
    return lambda prompts, responses: torch.tensor([scenario.grade(p, r) for p, r in zip(prompts, responses)])


@dataclass(frozen=True)
class RewardModelConfig:
    preset: PresetName = "mini"
    """Size of the reward model's transformer (a row of MODEL_PRESETS; `custom` is not offered here)."""
    n_pairs: int = 4096
    """Preference pairs to train on (another 512 are held out to measure its accuracy)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=600, lr=1e-3))
    """Optimisation of the Bradley-Terry loss."""

    def __post_init__(self):
        require(self.preset in MODEL_PRESETS, "preset", "one of " + ", ".join(MODEL_PRESETS), self.preset)
        require(self.n_pairs >= 1, "n_pairs", "an integer >= 1", self.n_pairs)


class RewardModel(nn.Module):
    """tokens (B, T) of <bos> prompt answer <eos> -> one reward each, read at the <eos> position."""

    batchable = True  # a Transformer body and a gather: the engine vmaps it

    def __init__(self, scenario: Scenario, preset: str, generator: torch.Generator):
        super().__init__()
        d_model, n_layers, n_heads = MODEL_PRESETS[preset]
        n_ctx = scenario.max_prompt_len + scenario.max_response_len
        self.body = Transformer(
            TransformerShape(len(scenario.vocab), n_ctx, d_model, n_layers, n_heads, 4 * d_model), generator
        )
        self.body.unembed = nn.Linear(d_model, 1)  # a scalar head in place of the vocabulary readout
        with torch.no_grad():
            self.body.unembed.weight.copy_(torch.randn(self.body.unembed.weight.shape, generator=generator) * 0.02)
            self.body.unembed.bias.zero_()
        self.pad_id = scenario.vocab.pad_id

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        last = tokens.ne(self.pad_id).sum(1) - 1  # rows are right-padded, so this is the <eos>
        values = self.body(tokens)[..., 0]  # (B, T); causal, so the last position has read everything
        return values.gather(1, last[:, None])[:, 0]  # (B,)


def encode_answers(scenario: Scenario, prompts: Sequence[Prompt], responses: Sequence[Tokens]) -> Sequences:
    """What the reward model reads: the prompt and the answer, scratchpad removed."""
    room = scenario.max_response_len - 1
    return encode_pairs(scenario, [(p, strip_scratchpad(r)[:room]) for p, r in zip(prompts, responses)])


def learned_reward(model: RewardModel, scenario: Scenario) -> RewardFn:
    def reward(prompts: Sequence[Prompt], responses: Sequence[Tokens]) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(encode_answers(scenario, prompts, responses).tokens)

    return reward


@dataclass(frozen=True)
class PreferencePairs:
    chosen: Sequences
    rejected: Sequences

    def __len__(self) -> int:
        return len(self.chosen)

    def select(self, index: torch.Tensor) -> "PreferencePairs":
        return PreferencePairs(self.chosen.select(index), self.rejected.select(index))


pytree.register_dataclass(PreferencePairs)  # the engine vmaps over stacked pairs


def candidate_answers(scenario: Scenario, prompt: Prompt, generator: torch.Generator) -> list[Tokens]:
    """Answers of graded quality for one prompt: right, one or two digits wrong, random, cut, padded, defect."""
    answer = list(prompt.answer)

    def corrupt(k: int) -> Tokens:
        out = list(answer)
        for at in torch.randperm(len(out), generator=generator)[:k].tolist():
            out[at] = (
                str((int(out[at]) + int(torch.randint(1, 10, (1,), generator=generator))) % 10)
                if out[at].isdigit()
                else out[at]
            )
        return tuple(out)

    extra = str(int(torch.randint(0, 10, (1,), generator=generator)))
    return [
        tuple(answer),
        corrupt(1),
        corrupt(2),
        scenario.task.random_answer(generator),
        tuple(answer[:-1]),
        (*answer, extra),
        scenario.defect(prompt),
    ]


def preference_pairs(scenario: Scenario, prompts: Sequence[Prompt], generator: torch.Generator) -> PreferencePairs:
    """One pair per prompt: two different candidates, the better-graded one chosen; ties are redrawn."""
    chosen, rejected = [], []
    for prompt in prompts:
        candidates = candidate_answers(scenario, prompt, generator)
        for _ in range(20):
            i, j = torch.randperm(len(candidates), generator=generator)[:2].tolist()
            gi, gj = scenario.grade(prompt, candidates[i]), scenario.grade(prompt, candidates[j])
            if gi != gj:
                better, worse = (i, j) if gi > gj else (j, i)
                chosen.append((prompt, candidates[better]))
                rejected.append((prompt, candidates[worse]))
                break
    return PreferencePairs(encode_pairs(scenario, chosen), encode_pairs(scenario, rejected))


class BradleyTerry:
    """The engine's objective for reward models: -log sigmoid(r(chosen) - r(rejected))."""

    def batch(self, run: Ensemble, draws: list[PreferencePairs]) -> PreferencePairs:
        return PreferencePairs(stack([d.chosen for d in draws]), stack([d.rejected for d in draws]))

    def loss(self, model, params, batch: PreferencePairs):
        margin = model(batch.chosen.tokens) - model(batch.rejected.tokens)  # (B,)
        return -F.logsigmoid(margin).mean(), {"accuracy": (margin > 0).float().mean()}


@torch.no_grad()
def pairs_ranked_right(model: RewardModel, pairs: PreferencePairs) -> tuple[int, int]:
    """(pairs whose chosen answer the model scores higher, pairs): the experiment makes the estimate."""
    model.eval()
    return int((model(pairs.chosen.tokens) > model(pairs.rejected.tokens)).sum()), len(pairs)


def train_reward_models(
    scenario: Scenario,
    config: RewardModelConfig,
    generators: Sequence[tuple[torch.Generator, torch.Generator, torch.Generator]],
    logs: Sequence[Logger | None] | None = None,
    progress: bool = False,
) -> list[tuple[RewardModel, tuple[int, int]]]:
    """Reward models trained together, one per (init, data, batches) generators; each with its
    (right, n) on 512 held-out pairs."""
    models, train_sets, held_sets = [], [], []
    for init, data, _ in generators:
        models.append(RewardModel(scenario, config.preset, init))
        prompts = scenario.sample_prompts(config.n_pairs + 512, data, False)
        train_sets.append(preference_pairs(scenario, prompts[: config.n_pairs], data))
        held_sets.append(preference_pairs(scenario, prompts[config.n_pairs :], data))
    train_together(
        models,
        train_sets,
        config.train,
        [batches for _, _, batches in generators],
        objective=BradleyTerry(),
        stage="reward_model",
        logs=list(logs) if logs is not None else None,
        progress=progress,
    )
    return [(model, pairs_ranked_right(model, held)) for model, held in zip(models, held_sets)]
