"""The Flag aggregator: keep what the inputs share in a low-dimensional subspace, found as a flag median.

Each node finds the ``r``-dimensional subspace ``Y`` closest to the *directions* of its inputs in the sense of
the flag median, ``min_Y sum_k sin theta_k`` (``theta_k``: the angle between input k and ``Y``), by
iteratively reweighted least squares: with weights ``w_k = (sin^2 theta_k + eps)^(-1/4)``, ``Y`` is the top-r
left singular vectors of ``[w_1 u_1, ..., w_K u_K]`` (``u_k``: the unit inputs). An input far from what the
others share gets a large angle and a small weight, so a few Byzantine directions cannot pull ``Y`` to them.
The node then keeps the part of its inputs inside ``Y``. The squared cosine ``||Y^T u_k||^2`` (the
reconstruction ratio) is a per-input quality score (:func:`flag_scores`).

The paper aggregates gradients at a server, normalised, and outputs ``(1/r) sum_k Y Y^T u_k``. A model-gossip
node aggregates models instead, so here the inputs are its neighbours' *displacements* ``d_k = x_k - x_own``
(its own model is the origin), and the step keeps their scale: ``x_own + Y Y^T mean_k(clip(d_k))``, the mean
over its own (zero) and received displacements as gossip averaging takes it, each displacement's norm capped at
the median norm of the node's inputs so that a huge vector inside ``Y`` moves it no further than a typical one
(this cap is peerlearn's addition: the paper's normalisation plays that role for gradients).

The subspace is found through the K x K Gram matrix of the weighted inputs (K: inputs per node), so a node's
cost is O(K^2 P) per iteration: one thin SVD in the paper's words.

References:
    Almasi, Mishra, Vepakomma & Ravi, "Flag Aggregator: Scalable Distributed Training under Failures and
    Augmented Losses using Convex Optimization", ICLR 2024 (code: hamidralmasi/FlagAggregator).
    Mankovich, King, Peterson & Kirby, "The Flag Median and FlagIRLS", CVPR 2022.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from peerlearn.types import Tensor


def _subspace(u_NKP: Tensor, ok_NK: Tensor, r: int, iterations: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(V_NKr, s_Nr, w_NK)``: the flag-median subspace of the unit inputs ``u`` after ``iterations`` IRLS
    reweightings, as ``Y = A^T V diag(1/s)`` with ``A = diag(w) u`` (``w``: the final weights), i.e. through the
    Gram matrix of the weighted inputs."""
    gram = u_NKP @ u_NKP.transpose(1, 2)  # [N, K, K]: u_k . u_l, computed once
    gram = gram * (ok_NK[:, :, None] & ok_NK[:, None, :]).to(gram.dtype)
    w = ok_NK.to(gram.dtype)
    for step in range(iterations + 1):
        evals, evecs = torch.linalg.eigh((w[:, :, None] * gram * w[:, None, :]).double())  # A A^T
        top = evals[..., -r:]
        # a node with fewer independent inputs than r spans less than r dimensions: the empty ones are dropped
        # (their 1/s would amplify rounding), so V's columns there are zeroed
        real = top > 1e-6 * top[..., -1:].clamp_min(1e-30)
        V = (evecs[..., -r:] * real[:, None, :]).to(gram.dtype)
        s = torch.where(real, top, torch.ones_like(top)).clamp_min(1e-30).sqrt().to(gram.dtype)
        if step == iterations:
            return V, s, w
        # ||Y^T u_k||^2 with Y^T u_k = diag(1/s) V^T A u_k = diag(1/s) V^T diag(w) gram[:, :, k]
        cos2 = ((V.transpose(1, 2) @ (w[:, :, None] * gram)) / s[:, :, None]).pow(2).sum(1).clamp(0.0, 1.0)
        w = ((1.0 - cos2) + eps).pow(-0.25) * ok_NK.to(gram.dtype)
    raise AssertionError("unreachable")


def flag_scores(x_NKP: Tensor, valid_NK: Tensor, r: int = 1, iterations: int = 4, eps: float = 1e-6) -> Tensor:
    """``ratio_NK``: each received input's reconstruction ratio ``||Y^T u_k||^2`` in (0, 1] (column 0, the own
    model, and padding: NaN)."""
    d = x_NKP - x_NKP[:, :1]
    ok = valid_NK.clone()
    ok[:, 0] = False
    ok &= d.norm(dim=2) > 0
    u = F.normalize(d, dim=2)
    V, s, w = _subspace(u, ok, r, iterations, eps)
    gram = u @ u.transpose(1, 2)
    proj = (V.transpose(1, 2) @ (w[:, :, None] * gram)) / s[:, :, None]
    return proj.pow(2).sum(1).clamp(0.0, 1.0).masked_fill(~ok, float("nan"))


def flag_aggregate(x_NKP: Tensor, valid_NK: Tensor, r: int = 1, iterations: int = 4, eps: float = 1e-6,
                   cap: bool = True) -> Tensor:
    """The own model moved by the part of the mean displacement inside the inputs' flag-median subspace, each
    displacement capped at the median norm (``cap``) (module doc)."""
    own = x_NKP[:, 0]
    d = x_NKP - x_NKP[:, :1]
    norms = d.norm(dim=2)
    ok = valid_NK.clone()
    ok[:, 0] = False
    ok &= norms > 0
    if not bool(ok.any()):
        return own.clone()
    u = d / norms.clamp_min(1e-30)[..., None]
    r_eff = min(r, x_NKP.shape[1] - 1)
    V, s, w = _subspace(u * ok[..., None], ok, r_eff, iterations, eps)
    limit = torch.nanmedian(norms.masked_fill(~ok, float("nan")), dim=1).values.nan_to_num(0.0)  # [N]
    kept = torch.minimum(norms, limit[:, None]) if cap else norms
    capped = d * (kept / norms.clamp_min(1e-30) * ok)[..., None]
    mean_d = capped.sum(1) / valid_NK.sum(1, keepdim=True).to(d.dtype)  # own (zero) and received displacements
    A = (w[:, :, None] * u * ok[..., None])  # [N, K, P]
    coeff = (V.transpose(1, 2) @ (A @ mean_d[:, :, None])) / s[:, :, None].pow(2)  # diag(1/s^2) V^T A m
    step = (A.transpose(1, 2) @ (V @ coeff))[..., 0]  # A^T V diag(1/s^2) V^T A m = Y Y^T m
    return own + step


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.aggregator: flag)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.aggregators.base import AGGREGATORS, AggregatorSpec  # noqa: E402


@AGGREGATORS.register
class FlagSpec(AggregatorSpec):
    """Flag aggregator (Almasi et al., ICLR 2024): keep the part of the neighbours' displacements inside their
    flag-median subspace, found by IRLS."""

    name: Literal["flag"] = "flag"
    r: int = Field(1, ge=1, le=64, description="dimension of the subspace the inputs are projected on")
    iterations: int = Field(4, ge=0, le=100, description="IRLS reweightings of the subspace")
    cap: bool = Field(True, description="cap each displacement's norm at the median of the node's inputs "
                                        "(peerlearn's addition for model gossip; false: the subspace alone)")
    factory: ClassVar = staticmethod(flag_aggregate)
