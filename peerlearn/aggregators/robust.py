"""Robust aggregation rules over each node's received models.

Every rule is batched over nodes and respects a padding mask:
``rule(x_NKP, valid_NK, **hyper) -> x_NP``. Column 0 of ``x_NKP`` is the node's own model
(``SimComm.gather(include_self=True)``), columns 1.. its neighbours' messages; padded
entries (``valid_NK`` False) never influence the result. ``f`` is the number of Byzantine
inputs a node is told to tolerate among the ones it receives.
"""

from __future__ import annotations

import torch

from peerlearn.aggregators.base import MIN_INPUTS, min_inputs_error  # noqa: F401 (MIN_INPUTS re-exported)
from peerlearn.aggregators.mean import masked_mean
from peerlearn.types import Tensor

def _counts(valid_NK: Tensor) -> Tensor:
    return valid_NK.sum(1)


def _require(valid_NK: Tensor, rule: str, f: int) -> None:
    error = min_inputs_error(rule, f, int(_counts(valid_NK).min()))
    if error:
        raise ValueError(error)


def coordinate_median(x_NKP: Tensor, valid_NK: Tensor) -> Tensor:
    """Coordinate-wise median of the valid inputs (the lower median for an even count).

    References:
        Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018.
    """
    masked = x_NKP.masked_fill(~valid_NK[..., None], float("nan"))
    return torch.nanmedian(masked, dim=1).values


def trimmed_mean(x_NKP: Tensor, valid_NK: Tensor, f: int = 1) -> Tensor:
    """Per coordinate, drop the ``f`` largest and ``f`` smallest valid values and average the rest.

    References:
        Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018.
    """
    _require(valid_NK, "trimmed_mean", f)
    ordered = x_NKP.masked_fill(~valid_NK[..., None], float("inf")).sort(dim=1).values  # valid ones first
    pos = torch.arange(x_NKP.shape[1])[None, :]
    keep = (pos >= f) & (pos < _counts(valid_NK)[:, None] - f)  # [N, K]
    kept = ordered.masked_fill(~keep[..., None], 0.0)
    return kept.sum(1) / keep.sum(1, keepdim=True).to(x_NKP.dtype)


def _krum_scores(x_NKP: Tensor, valid_NK: Tensor, f: int, d_NKK: Tensor | None = None) -> Tensor:
    """Krum score of each input: sum of squared distances to its ``k - f - 2`` nearest valid others.

    ``d_NKK`` reuses already computed squared distances (Bulyan scores shrinking sets).
    """
    d = torch.cdist(x_NKP, x_NKP).pow(2) if d_NKK is None else d_NKK  # [N, K, K]
    pair_ok = valid_NK[:, :, None] & valid_NK[:, None, :]
    pair_ok &= ~torch.eye(x_NKP.shape[1], dtype=torch.bool)[None]
    d = d.masked_fill(~pair_ok, float("inf")).sort(dim=2).values
    m = (_counts(valid_NK) - f - 2).clamp_min(1)
    take = torch.arange(x_NKP.shape[1])[None, None, :] < m[:, None, None]
    scores = d.masked_fill(~take, 0.0).sum(2)
    return scores.masked_fill(~valid_NK, float("inf"))


def _krum_rank(x_NKP: Tensor, valid_NK: Tensor, f: int, d_NKK: Tensor | None = None) -> Tensor:
    """Rank of each input by Krum score (0 = best), ties broken by the summed distance to all valid others.

    Ties are real: with ``k - f - 2 = 1`` two mutually nearest inputs score the same. Breaking them
    by a second score of the inputs themselves (not by their position) keeps the rule
    permutation-invariant.
    """
    d = torch.cdist(x_NKP, x_NKP).pow(2) if d_NKK is None else d_NKK
    scores = _krum_scores(x_NKP, valid_NK, f, d)
    total = (d * (valid_NK[:, :, None] & valid_NK[:, None, :])).sum(2).masked_fill(~valid_NK, float("inf"))
    order = total.argsort(dim=1)
    order = order.gather(1, scores.gather(1, order).argsort(dim=1, stable=True))  # by score, then total
    return order.argsort(dim=1)


def krum(x_NKP: Tensor, valid_NK: Tensor, f: int = 1) -> Tensor:
    """The input closest (in summed squared distance) to its ``k - f - 2`` nearest neighbours.

    References:
        Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
    """
    return multi_krum(x_NKP, valid_NK, f=f, m=1)


def multi_krum(x_NKP: Tensor, valid_NK: Tensor, f: int = 1, m: int | None = None) -> Tensor:
    """Average of the ``m`` inputs with the lowest Krum scores (default ``m = k - f``).

    References:
        Blanchard et al., NeurIPS 2017; El Mhamdi et al., "The Hidden Vulnerability of Distributed
        Learning in Byzantium", ICML 2018.
    """
    _require(valid_NK, "krum" if m == 1 else "multi_krum", f)
    counts = _counts(valid_NK)
    m_N = (counts - f) if m is None else torch.full_like(counts, m)
    rank = _krum_rank(x_NKP, valid_NK, f)
    return masked_mean(x_NKP, (rank < m_N[:, None]) & valid_NK)


def bulyan(x_NKP: Tensor, valid_NK: Tensor, f: int = 1) -> Tensor:
    """Bulyan over Krum: select ``theta = k - 2f`` inputs by repeated Krum (each winner removed), then
    per coordinate average the ``theta - 2f`` selected values closest to their median.

    Needs ``k >= 4f + 3`` inputs. Krum alone can be steered coordinate by coordinate by an input
    that is close in L2 but far in one coordinate; the trimmed second stage bounds every coordinate.

    References:
        El Mhamdi, Guerraoui & Rouault, "The Hidden Vulnerability of Distributed Learning in Byzantium",
        ICML 2018.
    """
    _require(valid_NK, "bulyan", f)
    d = torch.cdist(x_NKP, x_NKP).pow(2)
    theta_N = _counts(valid_NK) - 2 * f
    selected = torch.zeros_like(valid_NK)
    for step in range(int(theta_N.max())):
        remaining = valid_NK & ~selected
        pick = _krum_rank(x_NKP, remaining, f, d) == 0
        selected |= pick & (step < theta_N)[:, None]
    med = coordinate_median(x_NKP, selected)
    spread = (x_NKP - med[:, None, :]).abs().masked_fill(~selected[..., None], float("inf"))
    rank = spread.argsort(dim=1).argsort(dim=1)  # per coordinate: 0 = closest to the median
    keep = rank < (theta_N - 2 * f)[:, None, None]
    return (x_NKP * keep).sum(1) / keep.sum(1).to(x_NKP.dtype)


def geometric_median(x_NKP: Tensor, valid_NK: Tensor, nu: float = 1e-6, num_iters: int = 20) -> Tensor:
    """Smoothed Weiszfeld iterations for ``argmin_z sum_j ||z - x_j||`` (breakdown point 1/2).

    References:
        Pillutla, Kakade & Harchaoui, "Robust Aggregation for Federated Learning", IEEE TSP 2022 (RFA).
    """
    w = valid_NK.to(x_NKP.dtype)
    z = masked_mean(x_NKP, valid_NK)
    for _ in range(num_iters):
        beta = w / (x_NKP - z[:, None, :]).norm(dim=2).clamp_min(nu)
        z = (beta[..., None] * x_NKP).sum(1) / beta.sum(1, keepdim=True)
    return z


def centered_clipping(x_NKP: Tensor, valid_NK: Tensor, tau: float = 1.0, num_iters: int = 1) -> Tensor:
    """Self-centered clipping: start from the own model, add the mean of the clipped differences.

    ``v <- v + (1/k) sum_j clip(x_j - v, tau)`` with ``clip(u, tau) = u * min(1, tau/||u||)``.

    References:
        Karimireddy, He & Jaggi, "Learning from History for Byzantine Robust Optimization", ICML 2021;
        He, Karimireddy & Jaggi, "Byzantine-Robust Decentralized Learning via ClippedGossip", 2022.
    """
    w = valid_NK.to(x_NKP.dtype)
    v = x_NKP[:, 0]
    for _ in range(num_iters):
        diff = x_NKP - v[:, None, :]
        scale = (tau / diff.norm(dim=2).clamp_min(1e-12)).clamp(max=1.0) * w
        v = v + (scale[..., None] * diff).sum(1) / w.sum(1, keepdim=True)
    return v


def nearest_neighbor_mean(x_NKP: Tensor, valid_NK: Tensor, f: int = 1) -> Tensor:
    """NNA: the average of the ``k - f`` valid inputs closest to the node's own model (itself included).

    References:
        Farhadkhani et al., "Robust Collaborative Learning with Linear Gradient Overhead", ICML 2023 (MoNNA).
    """
    _require(valid_NK, "nearest_neighbor_mean", f)
    dist = (x_NKP - x_NKP[:, :1]).norm(dim=2).masked_fill(~valid_NK, float("inf"))
    rank = dist.argsort(dim=1).argsort(dim=1)
    return masked_mean(x_NKP, (rank < (_counts(valid_NK) - f)[:, None]) & valid_NK)


# ---------------------------------------------------------------------------------------------
# Specs (algorithm.aggregator)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.aggregators.base import AGGREGATORS, AggregatorSpec  # noqa: E402


class _Tolerant(AggregatorSpec):
    f: int = Field(1, ge=0, description="Byzantine inputs each node's rule tolerates")


@AGGREGATORS.register
class MedianSpec(AggregatorSpec):
    """Coordinate-wise median (Yin et al., ICML 2018)."""

    name: Literal["median"] = "median"
    factory: ClassVar = staticmethod(coordinate_median)


@AGGREGATORS.register
class TrimmedMeanSpec(_Tolerant):
    """Coordinate-wise mean without the f largest and f smallest values (Yin et al., ICML 2018)."""

    name: Literal["trimmed_mean"] = "trimmed_mean"
    factory: ClassVar = staticmethod(trimmed_mean)
    min_inputs: ClassVar = "trimmed_mean"


@AGGREGATORS.register
class KrumSpec(_Tolerant):
    """The input closest to its n - f - 2 nearest others (Blanchard et al., NeurIPS 2017)."""

    name: Literal["krum"] = "krum"
    factory: ClassVar = staticmethod(krum)
    min_inputs: ClassVar = "krum"


@AGGREGATORS.register
class MultiKrumSpec(_Tolerant):
    """The mean of the m best-scored inputs by Krum (Blanchard et al., NeurIPS 2017)."""

    name: Literal["multi_krum"] = "multi_krum"
    factory: ClassVar = staticmethod(multi_krum)
    min_inputs: ClassVar = "multi_krum"


@AGGREGATORS.register
class BulyanSpec(_Tolerant):
    """Krum selection, then a trimmed mean around the median (El Mhamdi et al., ICML 2018)."""

    name: Literal["bulyan"] = "bulyan"
    factory: ClassVar = staticmethod(bulyan)
    min_inputs: ClassVar = "bulyan"


@AGGREGATORS.register
class GeometricMedianSpec(AggregatorSpec):
    """Smoothed Weiszfeld geometric median (Pillutla et al., IEEE TSP 2022)."""

    name: Literal["geometric_median"] = "geometric_median"
    factory: ClassVar = staticmethod(geometric_median)


@AGGREGATORS.register
class CenteredClippingSpec(AggregatorSpec):
    """Clip every input's distance to the own model at tau (Karimireddy et al., ICML 2021; He et al., 2022)."""

    name: Literal["centered_clipping"] = "centered_clipping"
    tau: float = Field(1.0, gt=0.0, description="clipping radius")
    factory: ClassVar = staticmethod(centered_clipping)


@AGGREGATORS.register
class NearestNeighborMeanSpec(_Tolerant):
    """Mean of the own model and its n - f nearest inputs (Allouah et al., AISTATS 2023)."""

    name: Literal["nna"] = "nna"
    factory: ClassVar = staticmethod(nearest_neighbor_mean)
    min_inputs: ClassVar = "nearest_neighbor_mean"
