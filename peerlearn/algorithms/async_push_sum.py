"""Asynchronous push-sum (asynchronous gradient push): a node pushes as soon as its local steps are done.

Each node keeps a numerator ``x_i`` and a weight ``w_i`` (initially 1). When node ``i`` wakes it
takes its local steps at the de-biased model ``z_i = x_i / w_i``, adds ``w_i`` times the update to
``x_i`` (so that ``z_i`` moves by exactly its local update), keeps
``P_ii (x_i, w_i)`` and sends ``P_ji (x_i, w_i)`` to each out-neighbour ``j``, whose mass is simply
added (no waiting for anyone). Column sums of one conserve ``sum x`` and ``sum w`` at every event,
so the de-biased models tend to the average even though fast nodes push more often. With all
nodes waking together this is exactly synchronous push-sum (:func:`peerlearn.algorithms.push_sum`).

Why ``w_i`` times the update: synchronous SGP adds the plain update, which is the same while all
weights stay near 1. Asynchronously they do not: a fast node pushes most of its mass away at every
wake and its weight falls (to 0.07 in ``configs/stragglers.yaml``), so a plain update would move its
model ``1 / w_i`` times as far as its optimizer asked. Scaled, each step moves the node's own model
by its local update, and the network average moves by the mass-weighted mean of the updates.
(Measured on that config: worst node 0.19 instead of 0.10, mean accuracy unchanged at 0.60.)

References:
    Kempe, Dobra & Gehrke, "Gossip-Based Computation of Aggregate Information", FOCS 2003 (push-sum);
    Assran & Rabbat, "Asynchronous Gradient Push", IEEE Trans. Automatic Control 2021.
"""

from __future__ import annotations

import torch

from peerlearn.algorithms.local import local_steps
from peerlearn.algorithms.push_sum import PushSumState
from peerlearn.device import from_host
from peerlearn.rows import put_rows, take_rows
from peerlearn.types import AsyncAlgorithm, Transform


def async_push_sum(optimizer: Transform, num_local_steps: int = 1) -> AsyncAlgorithm:
    """Asynchronous push-sum with local steps; the mixing matrix must be column stochastic."""

    def init(params_NP):
        return PushSumState(params_NP.clone(), torch.ones(params_NP.shape[0], 1, dtype=params_NP.dtype),
                            optimizer.init(params_NP))

    def wake(state, params_NP, wakers, batches, grad_fn, net):
        rows = from_host(wakers)
        start = params_NP[rows]
        trained, opt_rows, loss = local_steps(start, take_rows(state.opt_state, rows), optimizer, batches,
                                              grad_fn, num_local_steps, rows)
        numerator = state.numerator_NP.clone()
        numerator[rows] += state.weight_N1[rows] * (trained - start)
        pushed = net.push(torch.cat([numerator, state.weight_N1], dim=1), wakers)
        numerator, weight = pushed[:, :-1], pushed[:, -1:]
        return numerator / weight, PushSumState(numerator, weight, put_rows(state.opt_state, rows, opt_rows)), {
            "loss": float(loss.mean())}

    return AsyncAlgorithm(init, wake)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: async_push_sum)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, Asynchronous, Capabilities  # noqa: E402


@ALGORITHMS.register
class AsyncPushSumSpec(Asynchronous):
    """Asynchronous push-sum: a waking node trains and pushes half its mass (Assran & Rabbat, 2020)."""

    name: Literal["async_push_sum"] = "async_push_sum"
    capabilities: ClassVar = Capabilities(engines=frozenset({"simulator", "p2p"}), asynchronous=True,
                                          column_stochastic=True)
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "its messages carry push-sum weights; attacks on the weights are not modelled yet",
        "privacy": "noise on push-sum weights is not modelled yet"}

    def build(self, ctx):
        return async_push_sum(self.transform(), self.num_local_steps)
