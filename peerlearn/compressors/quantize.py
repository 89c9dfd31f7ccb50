"""Quantizers: sign with a scale, QSGD, int8 and fp16.

References:
    Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems", ICML 2018, and
    Karimireddy et al., "Error Feedback Fixes SignSGD and other Gradient Compression Schemes",
    ICML 2019 (scaled sign: mean |v| times sign(v));
    Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient Quantization and Encoding",
    NeurIPS 2017 (s levels, stochastic rounding);
    Jaghouar et al., "INTELLECT-1 Technical Report", 2024 (int8 messages).
"""

from __future__ import annotations

import math

import torch

from peerlearn.compressors.base import Compressor, bits_to_bytes, per_row, seeded, stateless
from peerlearn.device import draw
from peerlearn.types import Tensor


def stochastic_round(r: Tensor, generator: torch.Generator) -> Tensor:
    """``floor(r)``, plus one with probability ``r - floor(r)``: unbiased rounding to the integers."""
    low = r.floor()
    return low + (draw(torch.rand, r.shape, generator=generator, dtype=r.dtype) < r - low).to(r.dtype)


def sign() -> Compressor:
    """``mean|v| * sign(v)`` per row (0 counts as +): P bits and one float32 scale."""

    def encode(x_NP):
        scale = x_NP.abs().mean(1, keepdim=True)
        return torch.where(x_NP >= 0, scale, -scale), per_row(bits_to_bytes(x_NP.shape[1]) + 4, x_NP)

    return stateless(encode)


def qsgd(levels: int, seed: int = 0, contract: bool = False) -> Compressor:
    """QSGD with ``s = levels``: ``||v|| sign(v_i) xi_i``, ``xi_i`` in {0, 1/s, ..., 1} by unbiased
    stochastic rounding of ``s |v_i| / ||v||``. Fixed-width codes of ``ceil(log2(2s + 1))`` bits per
    coordinate (sign and level together) plus the float32 norm.

    ``contract=True`` divides by ``tau = 1 + min(P / s^2, sqrt(P) / s)`` (the variance bound), which
    makes it a contraction as CHOCO-SGD needs (Koloskova et al. 2019, "biased QSGD"); then biased."""
    if levels < 1:
        raise ValueError(f"qsgd levels must be >= 1, got {levels}")
    width = math.ceil(math.log2(2 * levels + 1))

    def encode(x_NP, g):
        norm = x_NP.norm(dim=1, keepdim=True)
        r = levels * x_NP.abs() / norm.clamp_min(1e-30)
        level = stochastic_round(r, g)
        p = x_NP.shape[1]
        tau = 1 + min(p / levels**2, math.sqrt(p) / levels) if contract else 1.0
        return norm * x_NP.sign() * level / (levels * tau), per_row(bits_to_bytes(p * width) + 4, x_NP)

    return seeded(encode, seed, unbiased=not contract)


def int8() -> Compressor:
    """256 evenly spaced levels between each row's min and max (round to nearest): P bytes plus a
    float32 offset and scale."""

    def encode(x_NP):
        low = x_NP.min(1, keepdim=True).values
        scale = ((x_NP.max(1, keepdim=True).values - low) / 255).clamp_min(1e-30)
        return torch.round((x_NP - low) / scale) * scale + low, per_row(x_NP.shape[1] + 8, x_NP)

    return stateless(encode)


def fp16() -> Compressor:
    """Half precision: 2 bytes per coordinate."""
    return stateless(lambda x_NP: (x_NP.half().to(x_NP.dtype), per_row(2 * x_NP.shape[1], x_NP)))


def identity() -> Compressor:
    """No compression: the float32 row, 4 bytes per coordinate."""
    return stateless(lambda x_NP: (x_NP, per_row(x_NP.shape[1] * x_NP.element_size(), x_NP)), unbiased=True)


# ---------------------------------------------------------------------------------------------
# Specs (algorithm.compressor)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.compressors.base import COMPRESSORS, CompressorSpec  # noqa: E402


@COMPRESSORS.register
class NoneSpec(CompressorSpec):
    """No compression: dense float32 rows."""

    name: Literal["none"] = "none"
    dense: ClassVar = True

    def build(self, seed):
        return identity()


@COMPRESSORS.register
class SignSpec(CompressorSpec):
    """Scaled sign: ||x||_1 / P * sign(x), one bit per coordinate (Karimireddy et al., ICML 2019)."""

    name: Literal["sign"] = "sign"

    def build(self, seed):
        return sign()


@COMPRESSORS.register
class QsgdSpec(CompressorSpec):
    """QSGD stochastic quantisation to s levels, scaled down to a contraction (Alistarh et al., NeurIPS 2017)."""

    name: Literal["qsgd"] = "qsgd"
    qsgd_levels: int = Field(16, ge=1, le=2**20, description="quantization levels s")

    def build(self, seed):
        return qsgd(self.qsgd_levels, seed=seed, contract=True)


@COMPRESSORS.register
class Int8Spec(CompressorSpec):
    """Per-row absmax int8 quantisation (Dettmers et al., ICLR 2022)."""

    name: Literal["int8"] = "int8"
    requantizable: ClassVar[bool] = True

    def build(self, seed):
        return int8()


@COMPRESSORS.register
class Fp16Spec(CompressorSpec):
    """Half-precision rows."""

    name: Literal["fp16"] = "fp16"
    requantizable: ClassVar[bool] = True

    def build(self, seed):
        return fp16()
