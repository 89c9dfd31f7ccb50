"""The compressor contract: an (init, update) pair over message rows that reports the bytes it encodes.

``init(x_NP) -> state``; ``update(x_NP, state) -> (decoded_NP, bytes_N, state)``: ``decoded_NP`` is
what a receiver reconstructs from the encoded message, ``bytes_N`` the encoded size of each row
(values + indices + scales, counted from the encoding, never from the dense tensor).
``unbiased``: ``E[decoded] = x`` (checked statistically by the conformance battery).
Randomised compressors draw from a generator seeded by ``(seed, call)``, so a run is reproducible
and a resumed run continues the same stream; the receiver regenerates shared randomness (random-k
indices) from the same seed, so it is not sent.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch

from peerlearn.rng import step_generator
from peerlearn.types import Tensor


class Compressor(NamedTuple):
    init: Callable[[Tensor], Any]
    update: Callable[[Tensor, Any], tuple[Tensor, Tensor, Any]]
    unbiased: bool = False


class CallCount(NamedTuple):
    calls: int = 0


def stateless(encode: Callable[[Tensor], tuple[Tensor, Tensor]], unbiased: bool = False) -> Compressor:
    """A deterministic compressor from ``encode(x_NP) -> (decoded_NP, bytes_N)``."""
    return Compressor(lambda x_NP: CallCount(), lambda x_NP, state: (*encode(x_NP), state), unbiased)


def seeded(encode: Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]], seed: int,
           unbiased: bool = False) -> Compressor:
    """A randomised compressor: ``encode(x_NP, generator)`` with a generator seeded by (seed, call)."""

    def update(x_NP, state):
        g = step_generator(seed, state.calls)
        return (*encode(x_NP, g), CallCount(state.calls + 1))

    return Compressor(lambda x_NP: CallCount(), update, unbiased)


def per_row(nbytes: float, x_NP: Tensor) -> Tensor:
    """The same encoded size for every row."""
    return torch.full((x_NP.shape[0],), float(nbytes), dtype=torch.float64)


def num_kept(ratio: float, num_params: int) -> int:
    """Coordinates a sparsifier keeps: ``round(ratio * P)``, at least 1."""
    return max(1, min(num_params, int(round(ratio * num_params))))


def bits_to_bytes(bits: float) -> int:
    return int(math.ceil(bits / 8))


# ---------------------------------------------------------------------------------------------
# The family (algorithm.compressor)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar  # noqa: E402

from peerlearn.spec import Registry, Spec  # noqa: E402


class CompressorSpec(Spec):
    """A message compressor: ``build(seed) -> Compressor``, in its contraction form
    (E||C(x) - x||^2 <= (1 - delta) ||x||^2), as CHOCO-SGD and error feedback need."""

    dense: ClassVar[bool] = False  # sends rows unchanged (no compression, no error feedback needed)
    # a near-lossless quantizer: any row, a partial sum included, can be encoded again at every hop of a ring
    # all-reduce (peerlearn.compressors.ring); not a sparsifier (the sum of sparse rows is dense), nor a
    # contraction such as QSGD's scaled form or the scaled sign, whose shrinking would compound hop by hop
    requantizable: ClassVar[bool] = False

    def build(self, seed: int) -> Compressor:
        raise NotImplementedError


COMPRESSORS = Registry("compressor", CompressorSpec, "algorithm.compressor",
                       "message compressors (choco's messages; diloco's and local_sgd's pseudo-gradients)")
