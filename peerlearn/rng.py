"""Reproducible random streams: a fresh generator per (seed, step), so a draw depends only on the run's
seed and the round (or call) it belongs to, never on what was drawn before; a resumed run and every
rank of a distributed run draw the same numbers without carrying generator state."""

from __future__ import annotations

import torch


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of draw ``step`` in the stream ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)
