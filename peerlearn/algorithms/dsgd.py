"""Decentralized SGD (D-SGD / D-PSGD) with local steps, in both update orders.

- ``atc`` (adapt-then-combine, "diffusion"): ``x_i <- sum_j W_ij (x_j - eta * local_update_j)``.
- ``cta`` (combine-then-adapt, D-PSGD): ``x_i <- sum_j W_ij x_j + local_update_i(x_i)``; the
  local update is computed at the pre-mixing iterate, so computation and communication overlap.

With ``num_local_steps = tau > 1`` the local update is the sum of tau optimizer steps (local D-SGD).

References:
    Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms? A Case Study for
    Decentralized Parallel Stochastic Gradient Descent", NeurIPS 2017 (D-PSGD, CTA).
    Koloskova et al., "A Unified Theory of Decentralized SGD with Changing Topology and Local
    Updates", ICML 2020 (local steps, ATC form).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from peerlearn.algorithms.local import local_steps
from peerlearn.types import Algorithm, Transform


class DsgdState(NamedTuple):
    opt_state: Any


def dsgd(optimizer: Transform, num_local_steps: int = 1, order: str = "atc",
         aggregator: Callable | None = None) -> Algorithm:
    """Decentralized SGD: local steps, then gossip with the round's mixing matrix (ATC or CTA order).

    With ``aggregator`` (``rule(x_NKP, valid_NK) -> x_NP``, e.g. a robust rule) each node combines
    its own model and its neighbours' messages by that rule instead of the weighted sum ``W x``.
    """

    def combine(comm, x_NP):
        return comm.mix(x_NP) if aggregator is None else aggregator(*comm.gather(x_NP, include_self=True))

    if order not in ("atc", "cta"):
        raise ValueError(f"algorithm.order must be 'atc' or 'cta', got {order!r}")

    def init(params_NP):
        return DsgdState(optimizer.init(params_NP))

    def step(state, params_NP, batches, grad_fn, comm):
        trained, opt_state, loss = local_steps(params_NP, state.opt_state, optimizer, batches, grad_fn,
                                               num_local_steps)
        if order == "atc":
            params_NP = combine(comm, trained)
        else:
            params_NP = combine(comm, params_NP) + (trained - params_NP)
        return params_NP, DsgdState(opt_state), {"loss": float(loss.mean())}

    return Algorithm(init, step)
