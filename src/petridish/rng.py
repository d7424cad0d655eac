"""Explicit randomness: every draw comes from a generator derived from the run's seed and a stream name."""

import hashlib

import torch


def derive_seed(seed: int, stream: str) -> int:
    """A stable 63-bit seed for one named stream of a run (same inputs, same seed, any platform)."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream))
