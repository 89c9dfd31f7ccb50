"""Accelerated gossip: a two-term (Chebyshev) recursion over rounds that shrinks disagreement at
``~ 1 - sqrt(2 gap)`` per gossip step instead of plain gossip's ``1 - gap``.

With ``lambda`` the second largest eigenvalue modulus of the mixing matrix ``W`` (``1 - gap``), each
round's combine step becomes::

    x^{t+1} = omega_t * W z^t + (1 - omega_t) * x^{t-1},      z^t = the round's locally trained models

    omega_1 = 1,  omega_2 = 2 / (2 - lambda^2),  omega_{t+1} = 1 / (1 - lambda^2 omega_t / 4)

the Chebyshev semi-iterative method: on a fixed ``W`` and without training, ``x^t - x_bar`` is the
scaled Chebyshev polynomial ``T_t(W / lambda) / T_t(1 / lambda)`` of the start's disagreement, the
smallest any degree-``t`` polynomial in ``W`` achieves, and ``omega_t`` tends to
``2 / (1 + sqrt(1 - lambda^2))``, whose rate ``omega - 1 = ((1 - sqrt(1 - lambda^2)) / lambda)^2``
per step gives ``~ 1 - sqrt(2 gap)``. Every ``W`` doubly stochastic keeps the network mean: the
recursion is an affine combination of two iterates with the same mean. With training, the network
mean takes heavy-ball steps: ``mean x^{t+1} = omega mean z^t + (1 - omega) mean x^{t-1}``, momentum
``omega - 1`` with step ``omega * lr`` (tune ``lr`` with that in mind). The memory ``x^{t-1}`` must
have been mixed by the same ``W`` for the polynomial argument to hold: when the graph changes, the
recursion mixes iterates from different graphs and can amplify disagreement. Whether acceleration
is possible when the network changes slowly is the question of Metelev et al.; the reproduction in
``docs/reproductions.md`` measures it with ``topology.schedule: resample`` and its ``every``.

References:
    Golub & Varga, "Chebyshev semi-iterative methods, successive overrelaxation iterative methods,
    and second order Richardson iterative methods", Numerische Mathematik 1961 (the recursion).
    Liu & Morse, "Accelerated linear iterations for distributed averaging", Annual Reviews in
    Control 2011; Scaman, Bach, Bubeck, Lee & Massoulie, "Optimal Algorithms for Smooth and Strongly
    Convex Distributed Optimization in Networks", ICML 2017 (Chebyshev-accelerated gossip).
    Metelev, Rogozin, Kovalev & Gasnikov, "Is Consensus Acceleration Possible in Decentralized
    Optimization over Slowly Time-Varying Networks?", ICML 2023.
"""

from __future__ import annotations

import math

from peerlearn.types import Tensor


def chebyshev_omega(lam: float, t: int) -> float:
    """``omega_t`` of the recursion above for spectral bound ``lam`` (rounds count from 1), in closed form:
    ``omega_t = 2 T_{t-1}(1/lam) / (lam T_t(1/lam))`` with ``T_t(x) = cosh(t a)``, ``a = acosh(1/lam)``, written
    with ``exp(-2 t a)`` so that no cosh overflows; O(1) in ``t``."""
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"algorithm.acceleration_lambda must be in [0, 1), got {lam}")
    if t <= 1 or lam == 0.0:
        return 1.0
    a = math.acosh(1.0 / lam)
    ratio = math.exp(-a) * (1.0 + math.exp(-2.0 * (t - 1) * a)) / (1.0 + math.exp(-2.0 * t * a))  # T_{t-1} / T_t
    return 2.0 * ratio / lam


def stationary_rate(lam: float) -> float:
    """The recursion's asymptotic contraction of disagreement per step, ``sqrt(omega_inf - 1)``."""
    return (1.0 - math.sqrt(1.0 - lam * lam)) / lam if lam > 0 else 0.0


def accelerated(mixed_NP: Tensor, prev_NP: Tensor | None, omega: float) -> Tensor:
    """``omega * mixed + (1 - omega) * prev`` in place on ``mixed_NP`` (``prev`` None: the first round)."""
    if prev_NP is None or omega == 1.0:
        return mixed_NP
    return mixed_NP.mul_(omega).add_(prev_NP, alpha=1.0 - omega)
