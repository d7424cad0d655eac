"""P_B(f | S): how probable a function is under the prompt MLP's random initialisation, given that it fits
the training data (Valle-Pérez et al. 2019; Mingard et al. 2021, "Is SGD a Bayesian sampler?").

A function here is the network's greedy response to each of some prompts. P_B(f | S) is the probability
that parameters drawn from the initialisation give f, among the draws that fit the training set S. Drawing
parameters and keeping those that fit is hopeless (a random network answers a 4-token response right
about once in 27^4 and S has hundreds of them), so, as in that literature, the network is replaced by its
infinite-width limit, a Gaussian process, and the training fit is conditioned on inside the process:

- **Prior.** With `PromptMLP`'s initialisation (weights uniform in +-1/sqrt(fan_in), so variance
  1/(3 fan_in); biases zero) every logit (response position r, token v) is, as the width grows, an
  independent zero-mean GP over prompts with the ReLU (arc-cosine, degree 1) kernel, one per hidden
  layer: K0(x, x') = x.x' / (3 fan_in) on the one-hot prompts and K(x, x') = E[relu(u) relu(u')] / 3
  with (u, u') ~ N(0, K_previous), which is |x||x'| (sin t + (pi - t) cos t) / (6 pi) at angle t.
- **Training fit.** The exact constraint "argmax_v f_rv(x) = y_r(x) at every trained position" makes the
  posterior a truncated Gaussian in (training prompts x positions x vocabulary) dimensions; single-site
  Gibbs mixes far too slowly on it (the prompts share most tokens, so a site's conditional standard
  deviation is about a tenth of its prior one). We use the multiclass form of the probit likelihood of
  standard GP classification (Rasmussen and Williams 2006, ch. 3) instead: the argmax is taken of
  g = f + e with e ~ N(0, noise K_diag). Its posterior is sampled by the two-block data-augmentation Gibbs
  sampler of Albert and Chib (1993): g | f is a product of independent per-(prompt, position)
  argmax-truncated normals, f | g is Gaussian (GP regression), and a scale move on g (parameter expansion,
  Liu and Wu 1999) moves the overall margin, which the two blocks alone take hundreds of sweeps to settle;
  every sweep is two matrix products, with no loop over prompts. `tests/test_prior.py` holds it to the
  bivariate-normal orthant probability on a two-prompt, two-token case.
- **Test.** Given g, the logits on the test prompts are Gaussian (mean B g, a fixed covariance), so each
  kept g yields `draws` test functions at little cost. Response positions that no training row
  constrains are left at their prior.

Estimates. Each chain is one independent sample of the posterior process; a probability is the mean over
chains of the chain's fraction of draws, with a bootstrap interval over chains (`.n` = chains). A
function that no draw gave has p_b = 0, and `p_b.ci_high` is 3 / (draws in all), the rule of three.

Limits, said plainly. (1) The GP is the infinite-width limit; the networks have width 64, and their
first layer sums only the prompt's ~10 one-hot inputs, so P_B is of the limit, not of the network itself.
(2) The probit noise softens "fits S" to "fits S up to noise"; `train_fit` (the posterior's fraction
of trained positions whose argmax f equals the target) says how soft it was. (3) The sampler's burn-in is
a choice; `.mixing` compares the first and second halves of the kept sweeps. (4) A function's exact
P_B for the whole diagnostic set is far below what Monte Carlo can resolve, so functions are priced on a
few prompts (`function_prompts`), and the label classes on all of them. (5) P_B is the prior of the
whole training set at once; the networks train on prior exposure first, then on the agreement data.
(6) The rule-of-three bound treats draws as independent; draws of one chain are not, so it is optimistic.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from petridish.config import require
from petridish.data import Sequences
from petridish.measures.stats import Estimate, bootstrap_mean
from petridish.scenarios import Tokens, Vocab

FUNCTION_PAD = -1
"""The id after a response's <eos> (and everywhere when the response is absent)."""


@dataclass(frozen=True)
class PBConfig:
    samples: int = 0
    """Independent Gibbs chains, each one sample of the posterior process; 0: P_B is not estimated."""
    sweeps: int = 200
    """Gibbs sweeps per chain (each: g | f, then f | g)."""
    burnin: int = 100
    """Sweeps discarded before any is kept."""
    draws: int = 8
    """Test functions drawn from each kept sweep's g (f* | g is Gaussian, so draws are cheap)."""
    noise: float = 0.05
    """Probit noise variance, as a fraction of the kernel's mean diagonal: smaller fits S harder and mixes slower."""
    function_prompts: int = 6
    """Diagnostic prompts a per-function P_B is taken on (the first ones; functions on all of them never repeat)."""
    top_functions: int = 10
    """The most probable functions under P_B also recorded, whether or not training found them."""

    def __post_init__(self):
        require(self.samples >= 0, "samples", "an integer >= 0", self.samples)
        require(0 <= self.burnin < self.sweeps, "burnin", f"an integer in [0, sweeps={self.sweeps})", self.burnin)
        require(self.draws >= 1, "draws", "an integer >= 1", self.draws)
        require(self.noise > 0, "noise", "a number > 0", self.noise)
        require(self.function_prompts >= 1, "function_prompts", "an integer >= 1", self.function_prompts)
        require(self.top_functions >= 0, "top_functions", "an integer >= 0", self.top_functions)


# --- the kernel -----------------------------------------------------------------------------------


def one_hot_prompts(tokens: torch.Tensor, prompt_len: int, vocab_size: int, assistant_id: int) -> torch.Tensor:
    """The prompt MLP's input, as its forward builds it: the prompt through ASSISTANT, zero-padded, one-hot."""
    end = (tokens == assistant_id).int().argmax(1)  # (N,)
    padded = F.pad(tokens, (0, max(prompt_len - tokens.shape[1], 0)))[:, :prompt_len]
    prompts = padded.masked_fill(torch.arange(prompt_len) > end[:, None], 0)  # (N, P)
    return F.one_hot(prompts, vocab_size).double().flatten(1)  # (N, P*V)


def arccos_step(kernel: torch.Tensor) -> torch.Tensor:
    """E[relu(u) relu(u')] / 3 for (u, u') ~ N(0, kernel): one uniform(+-1/sqrt(fan_in)) ReLU layer."""
    norms = kernel.diagonal().clamp_min(1e-300).sqrt()
    cos = (kernel / norms[:, None] / norms[None]).clamp(-1.0, 1.0)
    angle = torch.arccos(cos)
    return norms[:, None] * norms[None] * (torch.sin(angle) + (math.pi - angle) * cos) / (6 * math.pi)


def nngp_kernel(features: torch.Tensor, depth: int) -> torch.Tensor:
    """The logits' covariance over prompts (N, N) for `depth` hidden ReLU layers in the infinite-width limit."""
    kernel = features @ features.T / (3 * features.shape[1])
    for _ in range(depth):
        kernel = arccos_step(kernel)
    return kernel


# --- the posterior sampler ------------------------------------------------------------------------


def normal_above(mean: torch.Tensor, std: float, lower: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """N(mean, std^2) conditioned on > lower, by inverting the upper tail (in float64: stable to 37 std into it)."""
    tail = torch.special.ndtr((mean.double() - lower.double()) / std)  # P(x > lower)
    u = torch.rand(mean.shape, generator=generator, dtype=torch.float64).clamp_min(1e-12)
    return (mean.double() - std * torch.special.ndtri(u * tail)).to(mean.dtype)


@dataclass(frozen=True)
class Posterior:
    """The precomputed Gaussian algebra of one training set and one set of test prompts."""

    g_precision: torch.Tensor
    """(N, N): (K + s I)^-1, g's precision with f integrated out; with h = (K + s I)^-1 g ..."""
    train_kernel: torch.Tensor
    """(N, N): ... f_train | g has mean K h ..."""
    train_chol: torch.Tensor
    """... and covariance train_chol @ train_chol.T;"""
    cross_kernel: torch.Tensor
    """(M, N): f_test | g has mean K*n h ..."""
    test_chol: torch.Tensor
    """... and covariance test_chol @ test_chol.T."""
    prior_chol: torch.Tensor
    """(M, M): the test prompts' prior, for positions no training row constrains."""
    noise_std: float


def jittered_cholesky(matrix: torch.Tensor) -> torch.Tensor:
    scale = matrix.diagonal().mean()
    eye = torch.eye(len(matrix), dtype=matrix.dtype)
    for jitter in (1e-10, 1e-8, 1e-6, 1e-4):
        chol, info = torch.linalg.cholesky_ex(matrix + jitter * scale * eye)
        if int(info) == 0:
            return chol
    raise ValueError("kernel matrix is not positive definite even with jitter")


def posterior(kernel: torch.Tensor, n_train: int, noise: float) -> Posterior:
    """Gaussian conditioning on g = f_train + e for the joint kernel over (training prompts, then test prompts)."""
    train, cross, test = kernel[:n_train, :n_train], kernel[n_train:, :n_train], kernel[n_train:, n_train:]
    noise_var = noise * float(train.diagonal().mean())
    chol = torch.linalg.cholesky(train + noise_var * torch.eye(n_train, dtype=kernel.dtype))
    to_train = torch.cholesky_solve(train, chol).T  # K (K + s I)^-1
    to_test = torch.cholesky_solve(cross.T, chol).T  # K*n (K + s I)^-1
    return Posterior(
        torch.cholesky_inverse(chol).float(),
        train.float(),
        jittered_cholesky(train - to_train @ train).float(),
        cross.float(),
        jittered_cholesky(test - to_test @ cross.T).float(),
        jittered_cholesky(test).float(),
        math.sqrt(noise_var),
    )


def sample_g(
    g: torch.Tensor, f: torch.Tensor, targets: torch.Tensor, std: float, generator: torch.Generator, steps: int = 1
) -> torch.Tensor:
    """One Gibbs update of g | f for g, f (C, R, V, N): N(f, std^2) where targets (N, R) is -1; elsewhere
    conditioned on argmax_v g = target, by alternating the non-targets (each independently below the
    target) and the target (above their max) `steps` times, starting from the current g (which already
    satisfies the constraint, so every step leaves g | f invariant)."""
    trained = targets.T >= 0  # (R, N)
    is_target = F.one_hot(targets.T.clamp_min(0), f.shape[2]).permute(0, 2, 1).bool() & trained[:, None]  # (R, V, N)
    g_target = (g * is_target).sum(2)  # (C, R, N)
    f_target = (f * is_target).sum(2)
    for _ in range(steps):
        others = torch.where(is_target, -math.inf, -normal_above(-f, std, -g_target[:, :, None], generator))
        g_target = normal_above(f_target, std, others.amax(2), generator)
    constrained = torch.where(is_target, g_target[:, :, None], others)
    free = f + std * torch.randn(f.shape, generator=generator)
    return torch.where(trained[:, None], constrained, free)


def feasible_start(shape: tuple[int, ...], targets: torch.Tensor, std: float) -> torch.Tensor:
    """A g (C, R, V, N) with argmax_v g = target wherever one is set: the target at std, the rest at 0."""
    is_target = F.one_hot(targets.T.clamp_min(0), shape[2]).permute(0, 2, 1).bool() & (targets.T >= 0)[:, None]
    return (std * is_target.float()).expand(shape).clone()


def scale_move(g: torch.Tensor, h: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The factor a (C, 1, 1, 1) of the move g -> a g, a^2 ~ Gamma(d/2, rate = g' (K + s I)^-1 g / 2) per chain,
    with h = (K + s I)^-1 g: the scale move of parameter-expanded data augmentation (Liu and Wu 1999). The
    argmax constraints are scale-free, so it leaves g's marginal (f integrated out) invariant, and it moves
    the overall margin, the direction the Gibbs steps mix slowest along. (torch draws no gamma from a
    generator; numpy's is seeded from it.)"""
    quad = (h * g).sum((1, 2, 3)).double()  # (C,)
    seed = int(torch.randint(2**62, (1,), generator=generator))
    gamma = torch.from_numpy(np.random.default_rng(seed).standard_gamma(g[0].numel() / 2, size=len(quad)))
    return (2 * gamma / quad).sqrt().float()[:, None, None, None]


@dataclass(frozen=True)
class Draws:
    """Test functions drawn from the posterior: greedy token ids per chain and draw."""

    ids: torch.Tensor
    """(C, D, M, R) long: each test prompt's greedy response ids, FUNCTION_PAD after the first <eos>."""
    train_fit: float
    """Mean fraction of trained (prompt, position) pairs whose argmax f equals the target, over kept sweeps."""
    halves: tuple[torch.Tensor, torch.Tensor]
    """ids split into the first and second halves of the kept sweeps (the mixing check)."""

    def first_positions(self, length: int) -> Draws:
        """The draws as generation of at most `length` tokens would give them."""
        first, second = self.halves
        return Draws(self.ids[..., :length], self.train_fit, (first[..., :length], second[..., :length]))


def greedy_ids(logits: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(..., R, V) logits -> (..., R) greedy ids, FUNCTION_PAD after the first <eos> (generation stops there)."""
    ids = logits.argmax(-1)
    after_eos = (ids == eos_id).long().cumsum(-1) - (ids == eos_id).long() > 0
    return ids.masked_fill(after_eos, FUNCTION_PAD)


def sample_functions(
    kernel: torch.Tensor, targets: torch.Tensor, config: PBConfig, vocab_size: int, eos_id: int, generator
) -> Draws:
    """Gibbs-sample the posterior given targets (N, R) (-1: untrained) and draw greedy test functions on
    the kernel's last M prompts. kernel is over (N training prompts, then M test prompts)."""
    n_train, n_test = targets.shape[0], kernel.shape[0] - targets.shape[0]
    post = posterior(kernel, n_train, config.noise)
    trained_positions = int((targets >= 0).any(0).nonzero().max()) + 1 if (targets >= 0).any() else 0
    c, r, v = config.samples, targets.shape[1], vocab_size
    rc = trained_positions
    f = torch.zeros(c, rc, v, n_train)
    g = feasible_start(f.shape, targets[:, :rc], post.noise_std)
    kept, fits = [], []
    for sweep in range(config.sweeps):
        g = sample_g(g, f, targets[:, :rc], post.noise_std, generator)
        h = g @ post.g_precision  # (K + s I)^-1 g, symmetric
        scale = scale_move(g, h, generator)
        g, h = g * scale, h * scale
        f = h @ post.train_kernel + torch.randn(f.shape, generator=generator) @ post.train_chol.T
        if sweep >= config.burnin:
            fits.append(train_fit(f, targets[:, :rc]))
            mean = h @ post.cross_kernel.T  # (C, Rc, V, M)
            noise = torch.randn((config.draws, *mean.shape), generator=generator) @ post.test_chol.T
            trained = mean + noise  # (D, C, Rc, V, M)
            free = torch.randn((config.draws, c, r - rc, v, n_test), generator=generator) @ post.prior_chol.T
            logits = torch.cat([trained, free], 2).permute(1, 0, 4, 2, 3)  # (C, D, M, R, V)
            kept.append(greedy_ids(logits, eos_id))
    if not torch.isfinite(g).all():
        raise FloatingPointError(
            "the posterior sampler produced a non-finite value (a truncated normal too far in its tail)"
        )
    ids = torch.cat(kept, 1)
    half = len(kept) // 2 * config.draws
    return Draws(ids, float(np.mean(fits)), (ids[:, :half], ids[:, half:]))


def train_fit(f: torch.Tensor, targets: torch.Tensor) -> float:
    trained = targets.T >= 0  # (R, N)
    hit = f.argmax(2) == targets.T.clamp_min(0)  # (C, R, N)
    return float(hit[:, trained].float().mean())


# --- from the run's data --------------------------------------------------------------------------


def training_targets(data: Sequences, response_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt tokens (N, T), targets (N, R)): response token r of row i where trained, else -1."""
    index = data.prompt_len[:, None] + torch.arange(response_len)  # (N, R)
    tokens = F.pad(data.tokens, (0, response_len))
    mask = F.pad(data.target_mask, (0, response_len))
    return data.tokens, torch.where(mask.gather(1, index), tokens.gather(1, index), -1)


def response_ids(vocab: Vocab, response: Sequence[str], response_len: int) -> list[int]:
    """A response as greedy_ids writes it: its ids, <eos> (when it fits), then FUNCTION_PAD to response_len."""
    ids = [vocab.index[t] for t in response] + [vocab.eos_id]
    return (ids + [FUNCTION_PAD] * response_len)[:response_len]


def function_key(ids: Sequence[int]) -> str:
    """A short stable name for one function (its greedy ids on the prompts of its window)."""
    return hashlib.sha256(repr(tuple(int(i) for i in ids)).encode()).hexdigest()[:12]


def chain_mean(values: torch.Tensor) -> Estimate:
    """values (C, D): the mean over chains of each chain's mean, bootstrap interval over chains (.n = chains)."""
    return bootstrap_mean(values.float().mean(1).tolist())


def agreements(ids: torch.Tensor, policy_ids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ids (..., M, R), policy_ids {policy: (M, R)} -> {policy: (...)}: fraction of prompts answered as it does."""
    return {name: (ids == ref).all(-1).float().mean(-1) for name, ref in policy_ids.items()}


def label_hits(
    ids: torch.Tensor, policy_ids: dict[str, torch.Tensor], classify: Callable[[dict[str, float]], str]
) -> dict[str, torch.Tensor]:
    """ids (C, D, M, R) -> {label: (C, D) bool}, by the networks' own rule `classify` on each draw's agreements."""
    agree = agreements(ids, policy_ids)
    names = list(agree)
    rows = torch.stack([agree[n] for n in names], -1).flatten(0, 1).tolist()  # (C*D, policies)
    labels = [classify(dict(zip(names, row))) for row in rows]
    return {label: torch.tensor([x == label for x in labels]).view(ids.shape[:2]) for label in set(labels)}


def windows(ids: torch.Tensor, size: int) -> torch.Tensor:
    """(..., M, R) -> (..., W, size * R): the functions on consecutive windows of `size` prompts."""
    n = ids.shape[-2] // size
    return ids[..., : n * size, :].reshape(*ids.shape[:-2], n, size * ids.shape[-1])


def function_fractions(draws: torch.Tensor) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """draws (C, D, L) on one window -> (the U distinct functions drawn, (C, U) each chain's fraction of them)."""
    unique, inverse = torch.unique(draws.flatten(0, 1), dim=0, return_inverse=True)
    chains, per_chain = draws.shape[:2]
    slot = inverse.view(chains, per_chain) + len(unique) * torch.arange(chains)[:, None]
    counts = torch.bincount(slot.flatten(), minlength=chains * len(unique)).view(chains, len(unique))
    return [tuple(row) for row in unique.tolist()], counts / per_chain


@dataclass(frozen=True)
class NetworkShape:
    """What of the prompt MLP its prior depends on."""

    vocab: Vocab
    prompt_len: int
    response_len: int
    depth: int
    assistant_id: int


def draw_test_functions(
    config: PBConfig,
    shape: NetworkShape,
    training: Sequence[Sequences],
    test_prompts: Sequence[Tokens],
    generator: torch.Generator,
) -> Draws:
    """Greedy functions on `test_prompts` drawn from P_B(. | every training set in `training` fitted)."""
    V = len(shape.vocab)
    features, targets = [], []
    for data in training:
        tokens, target = training_targets(data, shape.response_len)
        features.append(one_hot_prompts(tokens, shape.prompt_len, V, shape.assistant_id))
        targets.append(target)
    test = [torch.tensor(shape.vocab.encode(p)) for p in test_prompts]
    test_tokens = torch.nn.utils.rnn.pad_sequence(test, batch_first=True)
    features.append(one_hot_prompts(test_tokens, shape.prompt_len, V, shape.assistant_id))
    kernel = nngp_kernel(torch.cat(features), shape.depth)
    return sample_functions(kernel, torch.cat(targets), config, V, shape.vocab.eos_id, generator)


def label_metrics(
    draws: Draws,
    policy_ids: dict[str, torch.Tensor],
    classify: Callable[[dict[str, float]], str],
    labels: Sequence[str],
) -> dict[str, float]:
    """p_b.{label} (P_B of each class by the networks' rule), p_b.agreement.{policy} (mean fraction of the
    prompts answered as the policy does), each with `.mixing` (second half of the kept sweeps minus the
    first), and p_b.train_fit."""
    metrics: dict[str, float] = {
        "p_b.train_fit": draws.train_fit,
        "p_b.draws": draws.ids.shape[0] * draws.ids.shape[1],
    }
    by_label = label_hits(draws.ids, policy_ids, classify)
    halves = [label_hits(h, policy_ids, classify) for h in draws.halves]
    for label in labels:
        metrics.update(chain_mean(by_label.get(label, torch.zeros(draws.ids.shape[:2]))).as_metrics(f"p_b.{label}"))
        first, second = (float(h[label].float().mean()) if label in h else 0.0 for h in halves)
        metrics[f"p_b.{label}.mixing"] = second - first
    agree = agreements(draws.ids, policy_ids)
    halves_agree = [agreements(h, policy_ids) for h in draws.halves]
    for name, values in agree.items():
        metrics.update(chain_mean(values).as_metrics(f"p_b.agreement.{name}"))
        metrics[f"p_b.agreement.{name}.mixing"] = float(halves_agree[1][name].mean() - halves_agree[0][name].mean())
    return metrics


@dataclass(frozen=True)
class PricedFunction:
    window: int
    """Which window of diagnostic prompts (prompts window * size ... + size - 1)."""
    ids: tuple[int, ...]
    p_b: Estimate
    found: int
    """Networks that gave this function on this window."""


def price_functions(draws: Draws, found: torch.Tensor, size: int, top: int) -> list[PricedFunction]:
    """P_B of every function the networks gave on each window of `size` diagnostic prompts (found:
    (networks, M, R) greedy ids), and of each window's `top` most probable drawn functions."""
    drawn_windows, found_windows = windows(draws.ids, size), windows(found, size)
    chains, total = draws.ids.shape[0], draws.ids.shape[0] * draws.ids.shape[1]
    out = []
    for w in range(found_windows.shape[1]):
        functions, fractions = function_fractions(drawn_windows[:, :, w])
        column = {f: k for k, f in enumerate(functions)}
        counts: dict[tuple[int, ...], int] = {}
        for row in found_windows[:, w].tolist():
            counts[tuple(row)] = counts.get(tuple(row), 0) + 1
        ranked = [functions[k] for k in fractions.mean(0).argsort(descending=True)[:top].tolist()]
        for function in dict.fromkeys([*counts, *ranked]):
            p_b = (
                bootstrap_mean(fractions[:, column[function]].tolist())
                if function in column  # never drawn: zero, with the rule of three as its upper bound
                else Estimate(0.0, 0.0, min(1.0, 3 / total), chains)
            )
            out.append(PricedFunction(w, function, p_b, counts.get(function, 0)))
    return out
