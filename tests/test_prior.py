"""P_B (measures/prior.py) against analytic ground truth: the kernel against random networks' logits, the
truncated-normal draw against scipy, and the conditioned probability against the bivariate-normal orthant."""

import math

import pytest
import torch
from scipy.stats import truncnorm

from petridish.measures.prior import (
    FUNCTION_PAD,
    PBConfig,
    greedy_ids,
    nngp_kernel,
    normal_above,
    one_hot_prompts,
    sample_functions,
)
from petridish.models.mlp import PromptMLP
from petridish.rng import make_generator

VOCAB, PROMPT, ASSISTANT_ID = 4, 3, 3
PROMPTS = torch.tensor([[1, 2, 3], [1, 1, 3], [2, 0, 3], [1, 3, 2]])  # the last ends early: its tail is masked


def network_covariance(width: int, n_networks: int = 300) -> torch.Tensor:
    """Empirical covariance over prompts of random PromptMLPs' logits (every output position and token)."""
    samples = []
    for i in range(n_networks):
        model = PromptMLP(VOCAB, PROMPT, 2, width, 1, make_generator(i, "test:init"), ASSISTANT_ID)
        logits = model(PROMPTS)  # (B, T, V); position prompt_end predicts response token 0
        end = (PROMPTS == ASSISTANT_ID).int().argmax(1)
        samples.append(logits[torch.arange(len(PROMPTS)), end].T.detach())  # (V, B)
    outputs = torch.cat(samples).double()  # (networks * V, B)
    return outputs.T @ outputs / len(outputs)


def test_the_kernel_is_the_covariance_of_random_networks_logits():
    features = one_hot_prompts(PROMPTS, PROMPT, VOCAB, ASSISTANT_ID)
    torch.testing.assert_close(network_covariance(width=512), nngp_kernel(features, depth=1), rtol=0.12, atol=2e-3)


def test_the_kernel_check_fails_for_a_network_without_its_relu_layer():
    features = one_hot_prompts(PROMPTS, PROMPT, VOCAB, ASSISTANT_ID)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(network_covariance(width=512), nngp_kernel(features, depth=0), rtol=0.12, atol=2e-3)


@pytest.mark.parametrize("lower", [-1.0, 0.5, 3.0, 8.0])
def test_normal_above_has_the_truncated_normal_mean(lower):
    mean = torch.zeros(20000, dtype=torch.float64)
    draws = normal_above(mean, 1.0, torch.full_like(mean, lower), make_generator(0, "test:tn"))
    assert draws.min() > lower
    assert float(draws.mean()) == pytest.approx(truncnorm.mean(lower, math.inf), abs=0.02)


def test_the_truncated_mean_check_fails_against_the_untruncated_one():
    mean = torch.zeros(20000, dtype=torch.float64)
    draws = normal_above(mean, 1.0, torch.full_like(mean, 0.5), make_generator(0, "test:tn"))
    assert float(draws.mean()) != pytest.approx(0.0, abs=0.02)


def conditioned_probability(correlation: float, noise: float, target: int = 1) -> float:
    """P(test prompt's greedy token = 1) with one training prompt whose token is `target`, two tokens."""
    kernel = torch.tensor([[1.0, correlation], [correlation, 1.0]], dtype=torch.float64)
    config = PBConfig(samples=64, sweeps=40, burnin=10, draws=8, noise=noise)
    draws = sample_functions(kernel, torch.tensor([[target]]), config, 2, 2, make_generator(0, "test:pb"))
    return float((draws.ids[..., 0, 0] == 1).double().mean())


@pytest.mark.parametrize("correlation", [0.8, 0.0, -0.5])
def test_the_conditioned_probability_is_the_bivariate_orthant(correlation):
    # two tokens: the greedy token is the sign of h = f1 - f0, a GP with kernel 2K; the training token is the
    # sign of h + e with e ~ N(0, 2 noise), so P(test = 1 | train = 1) = 1/2 + arcsin(rho) / pi
    noise = 0.25
    rho = correlation / math.sqrt(1 + noise)
    expected = 0.5 + math.asin(rho) / math.pi
    assert conditioned_probability(correlation, noise) == pytest.approx(expected, abs=0.02)
    assert conditioned_probability(correlation, noise, target=0) == pytest.approx(1 - expected, abs=0.02)


def test_the_orthant_check_fails_for_the_unconditioned_prior():
    # the prior alone gives 1/2 for every correlation: the check above would catch a sampler that ignored S
    assert conditioned_probability(0.8, 0.25) != pytest.approx(0.5, abs=0.02)


def test_greedy_ids_stop_at_the_first_eos():
    logits = torch.nn.functional.one_hot(torch.tensor([[1, 2, 1, 2], [1, 1, 1, 1]]), 3).float()
    ids = greedy_ids(logits, eos_id=2)
    assert ids.tolist() == [[1, 2, FUNCTION_PAD, FUNCTION_PAD], [1, 1, 1, 1]]
