"""Sparsifiers: top-k and random-k.

References:
    Stich, Cordonnier & Jaggi, "Sparsified SGD with Memory", NeurIPS 2018 (top-k / random-k with
    error feedback); Alistarh et al., "The Convergence of Sparsified Gradient Methods", NeurIPS 2018.
"""

from __future__ import annotations

import torch

from peerlearn.compressors.base import Compressor, bits_to_bytes, num_kept, per_row, seeded, stateless
from peerlearn.device import draw


def top_k(ratio: float) -> Compressor:
    """The ``k = ratio * P`` largest-magnitude coordinates of each row. Encoded as k float32 values plus
    either k int32 indices or a P-bit mask, whichever is smaller: ``min(8k, ceil(P/8) + 4k)`` bytes."""

    def encode(x_NP):
        k = num_kept(ratio, x_NP.shape[1])
        idx = x_NP.abs().topk(k, dim=1, sorted=False).indices
        decoded = torch.zeros_like(x_NP).scatter_(1, idx, x_NP.gather(1, idx))
        return decoded, per_row(min(8 * k, bits_to_bytes(x_NP.shape[1]) + 4 * k), x_NP)

    return stateless(encode)


def random_k(ratio: float, seed: int = 0, rescale: bool = True) -> Compressor:
    """``k = ratio * P`` uniformly random coordinates per row (new ones at every call), scaled by P/k
    so the result is unbiased. The indices come from a seed both sides know: ``4k`` bytes."""

    def encode(x_NP, g):
        n, p = x_NP.shape
        k = num_kept(ratio, p)
        idx = draw(torch.rand, n, p, generator=g).topk(k, dim=1, sorted=False).indices
        scale = p / k if rescale else 1.0
        return torch.zeros_like(x_NP).scatter_(1, idx, x_NP.gather(1, idx) * scale), per_row(4 * k, x_NP)

    return seeded(encode, seed, unbiased=rescale)


# ---------------------------------------------------------------------------------------------
# Specs (algorithm.compressor)
# ---------------------------------------------------------------------------------------------
from typing import Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.compressors.base import COMPRESSORS, CompressorSpec  # noqa: E402


@COMPRESSORS.register
class TopKSpec(CompressorSpec):
    """The k largest-magnitude coordinates per row (Stich et al., NeurIPS 2018)."""

    name: Literal["top_k"] = "top_k"
    compress_ratio: float = Field(0.01, gt=0.0, le=1.0, description="fraction of coordinates sent")

    def build(self, seed):
        return top_k(self.compress_ratio)


@COMPRESSORS.register
class RandomKSpec(CompressorSpec):
    """k random coordinates per row, unscaled (a contraction; Stich et al., NeurIPS 2018)."""

    name: Literal["random_k"] = "random_k"
    compress_ratio: float = Field(0.01, gt=0.0, le=1.0, description="fraction of coordinates sent")

    def build(self, seed):
        return random_k(self.compress_ratio, seed=seed, rescale=False)
