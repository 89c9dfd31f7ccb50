"""Randomized quantization as the privacy mechanism (RQM): no noise is added, the randomness of the quantizer is
the privacy.

Each round a node's update in gradient units ``u_i = (x_i - trained_i) / lr`` is clipped coordinate-wise to
``[-D, D]`` (``privacy.clip``) and every coordinate ``x`` is quantized on a grid of ``m + 1`` evenly spaced levels
``l_k = -c + 2ck/m`` over ``[-c, c]``, ``c = rqm_range * D > D``, with two layers of randomness:

1. **level subsampling**: the two extreme levels are always kept, every interior level independently with
   probability ``q`` (``rqm_keep``);
2. **randomized rounding**: ``x`` goes to the nearest kept level above it, ``l_b``, with probability
   ``(x - l_a) / (l_b - l_a)`` and otherwise to the nearest kept level below, ``l_a`` (unbiased: ``E = x``).

The node's message is built from ``x_i - lr * Q(u_i)`` as with Gaussian noise (:mod:`peerlearn.privacy.gaussian`),
so what it shares is a post-processing of the release.

Accounting. The output of one coordinate is a distribution over the ``m + 1`` levels that this module computes
exactly (:func:`rqm_pmf`: the nearest kept level below is ``j - k`` with probability ``(1 - q)^k q``, the grid's
end absorbing the rest, likewise above, then the rounding weights), so its Renyi divergence between two inputs
is computed exactly too, in log space. With the same convention as the Gaussian mechanism (one node's clipped
update present or absent: ``x`` against 0), a coordinate costs ``max_x max(D_a(P_x || P_0), D_a(P_0 || P_x))``
over ``x`` in ``[-D, D]`` (a grid of 201 points, the ends included) at every order ``a``, and a round the
dimension ``d`` times that: each coordinate is its own release and, in the worst case, every coordinate of a
node's update changes with its data. (This composition over coordinates is the plain bound; the paper's own
vector-level analysis was not retrieved and a tighter one is not built.) The per-node Renyi vector composes over
rounds and converts to ``(epsilon, delta)`` by the same RDP accountant as the Gaussian mechanism. ``q = 1`` keeps
every level: the output then never leaves the two levels around ``x``, and ``x`` and 0 can be told apart with
certainty (infinite epsilon), so ``rqm_keep`` must be below 1.

References:
    Youn, Hu, Ziani & Abernethy, "Randomized Quantization is All You Need for Differential Privacy in Federated
    Learning", 2023 (arXiv:2306.11913); Mironov, "Renyi Differential Privacy", CSF 2017.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from peerlearn.device import draw, from_host, numpy
from peerlearn.privacy.accountant import epsilons, orders
from peerlearn.privacy.gaussian import MessagePrivacy, PrivacyState, no_releases
from peerlearn.rng import step_generator
from peerlearn.types import Tensor

_GRID = 201  # inputs in [-D, D] over which the worst-case divergence is taken


def levels(levels_m: int, c: float) -> np.ndarray:
    """The ``m + 1`` quantization levels over ``[-c, c]``."""
    return -c + 2.0 * c * np.arange(levels_m + 1) / levels_m


def rqm_pmf(x: np.ndarray, levels_m: int, keep: float, c: float) -> np.ndarray:
    """``P[x_i, k]``: the probability that RQM outputs level ``k`` for input ``x_i`` in ``[-c, c]`` (float64, exact)."""
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    m, lv = levels_m, levels(levels_m, c)
    j = np.clip(np.floor((x + c) / (2.0 * c / m)).astype(np.int64), 0, m - 1)  # l_j <= x < l_{j+1} (x = c: j = m-1)
    k = np.arange(m + 1)[None, :]
    jj = j[:, None]
    drop = 1.0 - keep
    # the nearest kept level at or below x is a = k <= j: levels j..k+1 dropped, k kept (level 0 always kept)
    below = np.where(k <= jj, drop ** np.clip(jj - k, 0, None) * np.where(k == 0, 1.0, keep), 0.0)
    # the nearest kept level above x is b = k >= j+1: levels j+1..k-1 dropped, k kept (level m always kept)
    above = np.where(k >= jj + 1, drop ** np.clip(k - jj - 1, 0, None) * np.where(k == m, 1.0, keep), 0.0)
    gap = lv[None, None, :] - lv[None, :, None]  # [1, a, b]: l_b - l_a
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.where(gap > 0, (x[:, None, None] - lv[None, :, None]) / gap, 0.0)  # P(round to l_b | a, b)
    pair = below[:, :, None] * above[:, None, :] * (gap > 0)  # [x, a, b]
    return (pair * (1.0 - up)).sum(2) + (pair * up).sum(1)


def renyi_divergence(p: np.ndarray, q: np.ndarray, alpha: float) -> float:
    """``D_alpha(P || Q)`` of two distributions over the same finite set, in log space (inf where P is not
    absolutely continuous with respect to Q)."""
    from scipy.special import logsumexp

    support = p > 0
    if np.any(q[support] <= 0):
        return math.inf
    logs = alpha * np.log(p[support]) + (1.0 - alpha) * np.log(q[support])
    return float(logsumexp(logs) / (alpha - 1.0))


@functools.cache
def rqm_rdp(clip: float, levels_m: int, keep: float, range_: float) -> np.ndarray:
    """One coordinate's worst-case Renyi divergence at each of the accountant's orders (module doc)."""
    from scipy.special import logsumexp

    c = range_ * clip
    pmf = rqm_pmf(np.linspace(-clip, clip, _GRID), levels_m, keep, c)  # [X, K]: full support, as keep < 1
    zero = rqm_pmf(np.zeros(1), levels_m, keep, c)  # [1, K]
    alpha = np.asarray(orders())[:, None, None]  # [A, 1, 1]
    log_p, log_0 = np.log(pmf)[None], np.log(zero)[None]
    forward = logsumexp(alpha * log_p + (1 - alpha) * log_0, axis=2) / (alpha[:, :, 0] - 1)  # D(P_x || P_0): [A, X]
    backward = logsumexp(alpha * log_0 + (1 - alpha) * log_p, axis=2) / (alpha[:, :, 0] - 1)
    return np.maximum(forward, backward).max(1)


def rqm_quantize(x: Tensor, levels_m: int, keep: float, c: float, generator: torch.Generator) -> Tensor:
    """RQM applied to every entry of ``x`` (entries in ``[-c, c]``), drawing from ``generator``."""
    h = 2.0 * c / levels_m
    j = torch.floor((x + c) / h).clamp(0, levels_m - 1)
    u_down, u_up, u_round = (draw(torch.rand, *x.shape, generator=generator, dtype=torch.float64) for _ in range(3))
    if keep < 1.0:  # dropped levels in a row before a kept one: geometric, truncated by the always-kept ends
        log_drop = math.log1p(-keep)
        skip_down = torch.floor(torch.log1p(-u_down) / log_drop).to(x.dtype)
        skip_up = torch.floor(torch.log1p(-u_up) / log_drop).to(x.dtype)
    else:
        skip_down = skip_up = torch.zeros_like(x)
    a = (j - skip_down).clamp(min=0)
    b = (j + 1 + skip_up).clamp(max=levels_m)
    low, high = a * h - c, b * h - c
    go_up = u_round.to(x.dtype) < (x - low) / (high - low)
    return torch.where(go_up, high, low)


def rqm_messages(clip: float, levels_m: int, keep: float, range_: float, lr: float = 1.0, delta: float = 1e-5,
                 seed: int = 0) -> MessagePrivacy:
    """Clip each node's update (in units of ``lr``) coordinate-wise to ``clip`` and quantize it with RQM
    (module doc); epsilon by the RDP accountant."""
    if clip <= 0.0:
        raise ValueError(f"privacy.clip must be > 0, got {clip}")
    if levels_m < 1:
        raise ValueError(f"privacy.rqm_levels must be >= 1, got {levels_m}")
    if not 0.0 < keep < 1.0:
        raise ValueError(f"privacy.rqm_keep must be in (0, 1), got {keep}")
    if range_ <= 1.0:
        raise ValueError(f"privacy.rqm_range must be > 1, got {range_}")
    c = range_ * clip
    per_coordinate = rqm_rdp(clip, levels_m, keep, range_)

    def privatize(update_NP, state, comm):
        n, p = comm.num_global, update_NP.shape[1]
        mine = (lambda t: t) if comm.node_ids is None else (lambda t: t[comm.node_ids])
        g = step_generator(seed, state.calls)
        u = (update_NP / lr).clamp(-clip, clip)
        full = u  # drawn for every node, ours kept: a rank gets the simulator's numbers
        if comm.node_ids is not None:
            full = u.new_zeros(n, p)
            full[comm.node_ids] = u
        q = mine(rqm_quantize(full, levels_m, keep, c, g))
        rdp = from_host(per_coordinate * p)[None, :]
        return q * lr, PrivacyState(state.calls + 1, state.rdp_NA + rdp)

    def epsilon(state):
        return epsilons(numpy(state.rdp_NA), delta)

    return MessagePrivacy(no_releases, privatize, epsilon)
