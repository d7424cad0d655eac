"""Activation capture through named hook points, one chosen token position per sequence.

`capture(model, sites)` registers a forward hook on each named module and yields an
`ActivationCache`; every forward pass inside the block appends, per site, the activation at the
position set with `cache.at(positions)` (or the whole sequence when none is set). Keeping one position
per sequence, batch by batch, bounds memory at (sequences x d_model) per site, never (x T).

The hook names are whatever `model.get_submodule` accepts: the hooked transformer's
`blocks.{i}.hook_resid_post` and friends, or a Hugging Face model's `transformer.h.{i}`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from petridish.errors import BadInput
from petridish.scenarios import Tokens, Vocab

RESIDUAL_KINDS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
# Where each kind sits inside block i, in blocks: resid_pre is the block's input, resid_post its output.
KIND_DEPTH = {
    "hook_resid_pre": 0.0,
    "hook_attn_out": 0.25,
    "hook_resid_mid": 0.5,
    "hook_mlp_out": 0.75,
    "hook_resid_post": 1.0,
}


class ActivationCache:
    """Per-site activations gathered over many forward passes; read them with `cache[site]`."""

    def __init__(self, sites: Sequence[str]):
        self.sites = tuple(sites)
        self._chunks: dict[str, list[torch.Tensor]] = {site: [] for site in self.sites}
        self._positions: torch.Tensor | None = None

    def at(self, positions: torch.Tensor | None) -> None:
        """Keep position `positions[b]` of row b in the next forward passes (None keeps all)."""
        self._positions = positions

    def _record(self, site: str, output) -> None:
        x = output[0] if isinstance(output, tuple) else output  # Hugging Face blocks return tuples
        x = x.detach()
        if self._positions is not None:
            x = x[torch.arange(x.shape[0]), self._positions]  # (B, C)
        self._chunks[site].append(x.float().clone())

    def __getitem__(self, site: str) -> torch.Tensor:
        if site not in self._chunks:
            raise KeyError(f"site {site!r} was not captured; captured: {', '.join(self.sites)}")
        chunks = self._chunks[site]
        return torch.cat(chunks) if chunks else torch.empty(0)

    def stacked(self) -> dict[str, torch.Tensor]:
        return {site: self[site] for site in self.sites}


@contextmanager
def capture(model: torch.nn.Module, sites: Sequence[str]) -> Iterator[ActivationCache]:
    """Hooks on `sites` for the duration of the block; they are removed even if the block raises."""
    modules = dict(model.named_modules())
    unknown = [site for site in sites if site not in modules]
    if unknown:
        known = [name for name in modules if name.split(".")[-1].startswith("hook_")] or list(modules)[1:]
        raise BadInput(
            f"site {unknown[0]!r}: no such module in {type(model).__name__}; expected one of {', '.join(known) or 'none'}"
        )
    cache = ActivationCache(sites)
    handles = [modules[site].register_forward_hook(_hook(cache, site)) for site in sites]
    try:
        yield cache
    finally:
        for handle in handles:
            handle.remove()


def _hook(cache: ActivationCache, site: str):
    return lambda module, inputs, output: cache._record(site, output)


@torch.no_grad()
def activations_at(
    model: torch.nn.Module, tokens: torch.Tensor, positions: torch.Tensor, sites: Sequence[str], batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """{site: (N, C)}: each site's activation at token `positions[n]` of row n, in batches."""
    was_training = model.training
    model.eval()
    try:
        with capture(model, sites) as cache:
            for start in range(0, len(tokens), batch_size):
                cache.at(positions[start : start + batch_size])
                model(tokens[start : start + batch_size])
    finally:
        model.train(was_training)
    return cache.stacked()


def encode_padded(vocab: Vocab, sequences: Sequence[Tokens]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (N, T) and the index of each sequence's last token (N,).

    Padding goes after the last token, so causal attention keeps it from reaching that position.
    """
    width = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), width), vocab.pad_id, dtype=torch.long)
    for i, sequence in enumerate(sequences):
        tokens[i, : len(sequence)] = torch.tensor(vocab.encode(sequence))
    last = torch.tensor([len(s) - 1 for s in sequences], dtype=torch.long)
    return tokens, last


def block_sites(n_layers: int, kinds: Sequence[str]) -> list[str]:
    """Hook names for `kinds` in every block, in depth order.

    `blocks.{i}.hook_resid_pre` for i > 0 is left out when resid_post is asked for: it is the same
    tensor as `blocks.{i-1}.hook_resid_post`, and a duplicate would only repeat its numbers.
    """
    sites = []
    for i in range(n_layers):
        for kind in kinds:
            if kind == "hook_resid_pre" and i > 0 and "hook_resid_post" in kinds:
                continue
            sites.append(f"blocks.{i}.{kind}")
    return sorted(sites, key=site_depth)


def site_depth(site: str) -> float:
    """Depth of a block site in blocks: blocks.{i}.hook_resid_pre -> i, ..resid_mid -> i + 0.5, ..resid_post -> i + 1."""
    _, index, kind = site.split(".")
    return int(index) + KIND_DEPTH[kind]
