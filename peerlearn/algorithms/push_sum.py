"""Stochastic Gradient Push: push-sum gossip with local SGD, for directed graphs.

Each node keeps a numerator ``x_i`` and a weight ``w_i`` (initially 1), takes its local steps
at the de-biased model ``z_i = x_i / w_i`` and applies the update to ``x_i``, then pushes
``(P_ji x_i, P_ji w_i)`` to itself and its out-neighbours with a column-stochastic ``P``.
Column sums of one conserve ``sum_i x_i`` and ``sum_i w_i``, so ``z_i`` tends to the true
average even though ``P`` does not preserve it row by row. The de-biased ``z`` is what the
engine evaluates; each message carries P + 1 values.

References:
    Kempe, Dobra & Gehrke, "Gossip-Based Computation of Aggregate Information", FOCS 2003 (push-sum);
    Assran, Loizou, Ballas & Rabbat, "Stochastic Gradient Push for Distributed Deep Learning", ICML 2019.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from peerlearn.algorithms.local import local_steps
from peerlearn.types import Algorithm, Tensor, Transform


class PushSumState(NamedTuple):
    numerator_NP: Tensor
    weight_N1: Tensor
    opt_state: Any


def push_sum(optimizer: Transform, num_local_steps: int = 1) -> Algorithm:
    """SGP: local steps at ``z = x / w``, then one push of ``[x, w]`` along the round's column-stochastic W."""

    def init(params_NP):
        return PushSumState(params_NP.clone(), torch.ones(params_NP.shape[0], 1, dtype=params_NP.dtype),
                            optimizer.init(params_NP))

    def step(state, params_NP, batches, grad_fn, comm):
        trained, opt_state, loss = local_steps(params_NP, state.opt_state, optimizer, batches, grad_fn,
                                               num_local_steps)
        numerator = state.numerator_NP + (trained - params_NP)
        pushed = comm.push(torch.cat([numerator, state.weight_N1], dim=1))
        numerator, weight = pushed[:, :-1], pushed[:, -1:]
        return numerator / weight, PushSumState(numerator, weight, opt_state), {"loss": float(loss.mean())}

    return Algorithm(init, step)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: push_sum)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from peerlearn.algorithms.semi_decentralized import ServerRounds  # noqa: E402
from peerlearn.algorithms.base import (ALGORITHMS, GOSSIP, Capabilities, LocalSteps,  # noqa: E402
                                       Synchronous)


@ALGORITHMS.register
class PushSumSpec(LocalSteps, Synchronous, ServerRounds):
    """Stochastic gradient push over directed graphs (Assran et al., ICML 2019)."""

    name: Literal["push_sum"] = "push_sum"
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "its messages carry push-sum weights; attacks on the weights are not modelled yet",
        "privacy": "noise on push-sum weights is not modelled yet"}
    capabilities: ClassVar = Capabilities(engines=GOSSIP, column_stochastic=True)

    def build(self, ctx):
        return push_sum(self.transform(), self.num_local_steps)
