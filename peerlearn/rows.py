"""Per-node state helpers: every tensor of a per-node state has a leading node axis, so selecting,
replacing or freezing rows selects, replaces or freezes nodes (parameters, momentum buffers, ...)."""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

from peerlearn.types import Tensor


def take_rows(state, rows: Tensor):
    """The rows ``rows`` of every tensor in a per-node state (every field has a leading node axis)."""
    return tree_map(lambda t: t[rows] if isinstance(t, Tensor) else t, state)


def put_rows(state, rows: Tensor, sub):
    """``state`` with rows ``rows`` of every tensor replaced by ``sub``'s (a copy; ``state`` is kept)."""
    def put(full, part):
        if not isinstance(full, Tensor):
            return full
        full = full.clone()
        full[rows] = part
        return full

    return tree_map(put, state, sub)


def freeze_rows(new, old, frozen_N: Tensor):
    """``new`` with the rows of ``frozen_N`` taken from ``old``, in every tensor whose first dimension
    is the node dimension (parameters and per-node algorithm state such as momentum buffers).

    Shared state (a server model, an outer momentum ``[P]``) is left as it is.
    """
    n = frozen_N.shape[0]

    def pick(a, b):
        if isinstance(a, Tensor) and isinstance(b, Tensor) and a.ndim >= 1 and a.shape[0] == n \
                and b.shape == a.shape:
            mask = frozen_N.reshape(-1, *([1] * (a.ndim - 1)))
            return torch.where(mask, b, a)
        return a

    return tree_map(pick, new, old) if not isinstance(new, Tensor) else pick(new, old)
