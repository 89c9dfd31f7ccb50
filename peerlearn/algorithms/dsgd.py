"""Decentralized SGD (D-SGD / D-PSGD) with local steps, in both update orders, and its variants.

- ``atc`` (adapt-then-combine, "diffusion"): ``x_i <- sum_j W_ij (x_j - eta * local_update_j)``.
- ``cta`` (combine-then-adapt, D-PSGD): ``x_i <- sum_j W_ij x_j + local_update_i(x_i)``; the
  local update is computed at the pre-mixing iterate, so computation and communication overlap.

Variants, each one argument:

- ``num_local_steps = tau > 1``: the local update is the sum of tau optimizer steps (local D-SGD);
- ``aggregator``: a robust rule over the gathered neighbour models instead of ``W x``;
- ``gossip_steps = Q``: Q gossip rounds per training round (``X W^Q``; DFedSAM-MGS);
- ``sam_rho > 0``: sharpness-aware local steps (DFedSAM);
- ``communicate(round) -> bool``: skip gossip in some rounds (communication schedules);
- ``combine``: replaces the whole combine step (e.g. variance-corrected averaging).

References:
    Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms? A Case Study for
    Decentralized Parallel Stochastic Gradient Descent", NeurIPS 2017 (D-PSGD, CTA).
    Koloskova et al., "A Unified Theory of Decentralized SGD with Changing Topology and Local
    Updates", ICML 2020 (local steps, ATC form).
    Shi et al., "Improving the Model Consistency of Decentralized Federated Learning", ICML 2023
    (DFedSAM, DFedSAM-MGS).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from peerlearn.algorithms.local import local_steps
from peerlearn.types import Algorithm, Transform


class DsgdState(NamedTuple):
    opt_state: Any
    round: int = 0


def gossip_combine(aggregator: Callable | None = None, gossip_steps: int = 1) -> Callable:
    """``combine(comm, x_NP)``: Q steps of ``W x``, or of a rule over the gathered neighbour models."""

    def combine(comm, x_NP):
        for _ in range(gossip_steps):
            x_NP = comm.mix(x_NP) if aggregator is None else aggregator(*comm.gather(x_NP, include_self=True))
        return x_NP

    return combine


def dsgd(optimizer: Transform, num_local_steps: int = 1, order: str = "atc",
         aggregator: Callable | None = None, gossip_steps: int = 1, sam_rho: float = 0.0,
         communicate: Callable[[int], bool] | None = None, combine: Callable | None = None) -> Algorithm:
    """Decentralized SGD: local steps, then gossip with the round's mixing matrix (ATC or CTA order).

    With ``aggregator`` (``rule(x_NKP, valid_NK) -> x_NP``, e.g. a robust rule) each node combines
    its own model and its neighbours' messages by that rule instead of the weighted sum ``W x``.
    """
    if order not in ("atc", "cta"):
        raise ValueError(f"algorithm.order must be 'atc' or 'cta', got {order!r}")
    if gossip_steps < 1:
        raise ValueError(f"algorithm.gossip_steps must be >= 1, got {gossip_steps}")
    combine = combine or gossip_combine(aggregator, gossip_steps)

    def init(params_NP):
        return DsgdState(optimizer.init(params_NP))

    def step(state, params_NP, batches, grad_fn, comm):
        round_ = state.round + 1
        trained, opt_state, loss = local_steps(params_NP, state.opt_state, optimizer, batches, grad_fn,
                                               num_local_steps, sam_rho=sam_rho)
        if communicate is not None and not communicate(round_):
            params_NP = trained
        elif order == "atc":
            params_NP = combine(comm, trained)
        else:
            params_NP = combine(comm, params_NP) + (trained - params_NP)
        return params_NP, DsgdState(opt_state, round_), {"loss": float(loss.mean())}

    return Algorithm(init, step)


def communication_schedule(num_rounds: int, every: int = 1, late_fraction: float = 0.0) -> Callable[[int], bool]:
    """Gossip every ``every`` rounds, and every round during the last ``late_fraction`` of the run.

    Spending the gossip budget late is what "A Single Merging Suffices" finds generalises best.

    References:
        Zhu et al., "A Single Merging Suffices: Recovering Server-based Learning Performance in
        Decentralized Learning", 2025 (arXiv:2507.06542).
    """
    late_start = num_rounds - int(round(late_fraction * num_rounds))
    return lambda round_: round_ % every == 0 or round_ > late_start
