"""Synchronous data-parallel SGD: the centralized reference on pooled data.

Every step, each node computes a gradient on its own mini-batch; gradients are averaged over
all nodes (an all-reduce), weighted by node data size by default, so the average is an
unbiased estimate of the gradient of the pooled training loss; every node applies the same
step, so all rows stay equal to the one centralized model.

References:
    Dean et al., "Large Scale Distributed Deep Networks", NeurIPS 2012 (synchronous data parallelism);
    Goyal et al., "Accurate, Large Minibatch SGD", arXiv:1706.02677, 2017.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from peerlearn.types import Algorithm, Tensor, Transform


class CentralizedState(NamedTuple):
    opt_state: Any


def centralized(optimizer: Transform, num_local_steps: int = 1, weights_N: Tensor | None = None) -> Algorithm:
    """``num_local_steps`` synchronous steps per round (one all-reduce each)."""

    def init(params_NP):
        return CentralizedState(optimizer.init(params_NP))

    def step(state, params_NP, batches, grad_fn, comm):
        opt_state, loss_total = state.opt_state, 0.0
        for _ in range(num_local_steps):
            loss_N, grads_NP = grad_fn(params_NP, batches.next())
            mean_grad_P = comm.all_reduce_mean(grads_NP, None if weights_N is None else comm.own(weights_N))
            updates_NP, opt_state = optimizer.update(mean_grad_P.expand_as(grads_NP), opt_state, params_NP)
            params_NP = params_NP + updates_NP
            loss_total += float(loss_N.mean())
        return params_NP, CentralizedState(opt_state), {"loss": loss_total / num_local_steps}

    return Algorithm(init, step)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: centralized)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, SYNC, Capabilities, LocalSteps, Synchronous, weights  # noqa: E402


@ALGORITHMS.register
class CentralizedSpec(LocalSteps, Synchronous):
    """Centralized (parallel) SGD: every node's gradient averaged each step, the upper baseline."""

    name: Literal["centralized"] = "centralized"
    weighting: Literal["data_size", "uniform"] = Field("data_size", description="weight nodes by their data size "
                                                                                "or equally")
    capabilities: ClassVar = Capabilities(engines=SYNC | {"p2p"}, global_model=True)
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "its gradients meet in a trusted all-reduce, with no message to replace",
        "privacy": "noise in the all-reduce (DP-SGD) is not built yet"}

    def build(self, ctx):
        return centralized(self.transform(), self.num_local_steps, weights(self, ctx))
