"""Per-node privacy accounting: Renyi DP of the Gaussian mechanism, composed over a node's messages and
converted to (epsilon, delta) by Opacus's RDP accountant.

A node that sends a message perturbed by Gaussian noise of standard deviation ``sigma * C`` around a
quantity of L2 sensitivity ``C`` releases one Gaussian mechanism with noise multiplier ``sigma``. Its
Renyi divergences at the orders ``alpha`` add up over the rounds it sends (composition), and the
total converts to (epsilon, delta). Both steps come from the library, not from formulas written here;
the per-node state is just the accumulated RDP vector, so nodes that send in different rounds (faults,
time-varying graphs) or with different effective noise (pairwise noise on an irregular graph) each get
their own epsilon.

``accountant: exact`` (:func:`exact_epsilons`) reads the same state differently. Without subsampling, each
release is a Gaussian mechanism, whose privacy loss distribution is itself Gaussian: ``T`` releases with
multipliers ``sigma_t`` compose exactly to one ``mu``-GDP mechanism with ``mu^2 = sum_t 1 / sigma_t^2``
(Dong, Roth & Su), and ``(epsilon, delta)`` follows in closed form (Balle & Wang's analytic Gaussian
mechanism). That is the tightest bound there is for these releases, where RDP's conversion overstates
epsilon (by 5.6-7.5% at delta = 1e-5 in peerlearn's settings: ``tests/privacy/test_accountant.py``); a PLD
accountant (Opacus's PRV) computes the same curve numerically. ``mu^2`` needs no new state: the RDP of the
Gaussian mechanism at order ``alpha`` is ``alpha mu^2 / 2``.

References:
    Dong, Roth & Su, "Gaussian Differential Privacy", JRSS-B 2022 (arXiv:1905.02383, 2019), Corollary 3.3
    (composition) and Corollary 2.13 (the (epsilon, delta) curve); Balle & Wang, "Improving the Gaussian
    Mechanism for Differential Privacy: Analytical Calibration and Optimal Denoising", ICML 2018;
    Mironov, "Renyi Differential Privacy", CSF 2017; Mironov, Talwar & Zhang, "Renyi Differential
    Privacy of the Sampled Gaussian Mechanism", 2019; Balle et al., "Hypothesis Testing Interpretations
    and Renyi Differential Privacy", AISTATS 2020 (the conversion); Yousefpour et al., "Opacus:
    User-Friendly Differential Privacy Library in PyTorch", 2021.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np


@functools.cache
def orders() -> tuple[float, ...]:
    """The Renyi orders alpha the accountant tracks: Opacus's defaults (1.1 to 63), extended down to 1.01
    (where the optimum lies for large epsilon, as without subsampling) and up to 256 (small epsilon)."""
    from opacus.accountants import RDPAccountant  # imported on first use: Opacus takes seconds to import

    extra = [1 + x / 100 for x in range(1, 10)] + [64.0, 80.0, 96.0, 128.0, 192.0, 256.0]
    return tuple(sorted({float(a) for a in RDPAccountant.DEFAULT_ALPHAS} | set(extra)))


@functools.cache
def _rdp_one(noise_multiplier: float) -> np.ndarray:
    from opacus.accountants.analysis.rdp import compute_rdp

    if noise_multiplier == 0.0:  # no noise: no privacy (Opacus agrees; said here to skip its warning path)
        return np.full(len(orders()), np.inf)
    if np.isinf(noise_multiplier):
        return np.zeros(len(orders()))
    return np.asarray(compute_rdp(q=1.0, noise_multiplier=noise_multiplier, steps=1, orders=list(orders())),
                      dtype=np.float64)


def gaussian_rdp(noise_multipliers_N: np.ndarray) -> np.ndarray:
    """``rdp_NA``: the RDP at each order of one Gaussian release by each node with its noise multiplier."""
    sigma = np.asarray(noise_multipliers_N, dtype=np.float64)
    uniq, inverse = np.unique(sigma, return_inverse=True)
    return np.stack([_rdp_one(float(s)) for s in uniq])[inverse.reshape(-1)]


def epsilons(rdp_NA: np.ndarray, delta: float) -> np.ndarray:
    """``epsilon_N`` at ``delta`` from each node's accumulated RDP (0 for a node that never sent)."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    if not 0.0 < delta < 1.0:
        raise ValueError(f"privacy.delta must be in (0, 1), got {delta}")
    rdp_NA = np.asarray(rdp_NA, dtype=np.float64)
    uniq, inverse = np.unique(rdp_NA, axis=0, return_inverse=True)
    eps = np.empty(len(uniq))
    for k, row in enumerate(uniq):
        if not row.any():
            eps[k] = 0.0
        elif not np.isfinite(row).all():
            eps[k] = np.inf
        else:
            with warnings.catch_warnings():  # "optimal order is the smallest/largest alpha": the bound is
                warnings.simplefilter("ignore", UserWarning)  # still valid, only looser at such epsilon
                eps[k] = get_privacy_spent(orders=list(orders()), rdp=row, delta=delta)[0]
    return eps[inverse.reshape(-1)]


def gdp_delta(epsilon: float, mu: float) -> float:
    """``delta(epsilon)`` of a ``mu``-GDP mechanism: ``Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``, the
    second term in log space (no overflow at large epsilon)."""
    from scipy.special import log_ndtr, ndtr

    return float(ndtr(-epsilon / mu + mu / 2) - np.exp(epsilon + log_ndtr(-epsilon / mu - mu / 2)))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest ``epsilon >= 0`` with ``delta(epsilon) <= delta`` for a ``mu``-GDP mechanism (0 when
    ``mu = 0``: nothing released; inf when ``mu`` is infinite: no noise)."""
    if mu == 0.0:
        return 0.0
    if not np.isfinite(mu):
        return float("inf")
    if gdp_delta(0.0, mu) <= delta:
        return 0.0
    lo, hi = 0.0, max(1.0, mu * mu / 2 + mu * 10)  # delta(eps) falls with eps; hi is far past the answer
    while gdp_delta(hi, mu) > delta:
        hi *= 2
    for _ in range(200):  # bisection to float precision
        mid = (lo + hi) / 2
        if gdp_delta(mid, mu) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi


def exact_epsilons(rdp_NA: np.ndarray, delta: float) -> np.ndarray:
    """``epsilon_N`` at ``delta`` of each node's composed Gaussian releases, exactly (``mu^2 = 2 rdp / alpha``)."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"privacy.delta must be in (0, 1), got {delta}")
    mu2_N = 2.0 * np.asarray(rdp_NA, dtype=np.float64)[:, 0] / orders()[0]
    uniq, inverse = np.unique(mu2_N, return_inverse=True)  # nodes with the same releases share one solve
    return np.array([gdp_epsilon(float(np.sqrt(m)), delta) for m in uniq])[inverse.reshape(-1)]
