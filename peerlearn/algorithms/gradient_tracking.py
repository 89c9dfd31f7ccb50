"""Gradient tracking (DIGing): each node also gossips a tracker of the network's average gradient.

    x^{t+1} = W x^t - eta y^t
    y^{t+1} = W y^t + g(x^{t+1}) - g(x^t),      y^0 = g(x^0)

Because ``sum_i y_i = sum_i g_i`` at every round, each node steps along an estimate of the
average gradient rather than its own; the heterogeneity term of D-SGD vanishes and with
exact gradients a constant step reaches the exact optimum. Twice the traffic of D-SGD.

References:
    Nedić, Olshevsky & Shi, "Achieving Geometric Convergence for Distributed Optimization over
    Time-Varying Graphs", SIAM J. Optim. 2017 (DIGing);
    Di Lorenzo & Scutari, "NEXT: In-Network Nonconvex Optimization", IEEE TSIPN 2016.
"""

from __future__ import annotations

from typing import NamedTuple

from peerlearn.types import Algorithm, Tensor


class TrackingState(NamedTuple):
    tracker_NP: Tensor | None  # y: None until the first round computes g(x^0)
    grad_NP: Tensor | None     # g(x^t), the gradient the tracker last added


def gradient_tracking(lr: float) -> Algorithm:
    """DIGing with step ``lr``: one mini-batch gradient per node and round, two gossip messages."""

    def init(params_NP):
        return TrackingState(None, None)

    def step(state, params_NP, batches, grad_fn, comm):
        tracker, grad = state
        if tracker is None:
            _, grad = grad_fn(params_NP, batches.next())
            tracker = grad
        params_NP = comm.mix(params_NP) - lr * tracker
        loss, new_grad = grad_fn(params_NP, batches.next())
        tracker = comm.mix(tracker) + new_grad - grad
        return params_NP, TrackingState(tracker, new_grad), {"loss": float(loss.mean())}

    return Algorithm(init, step)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: gradient_tracking)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from peerlearn.algorithms.semi_decentralized import ServerRounds  # noqa: E402
from peerlearn.algorithms.base import ALGORITHMS, GOSSIP, Capabilities, Synchronous  # noqa: E402


@ALGORITHMS.register
class GradientTrackingSpec(Synchronous, ServerRounds):
    """Gradient tracking (DIGing, Nedic et al., SIAM J. Optim. 2017): one step per round."""

    name: Literal["gradient_tracking"] = "gradient_tracking"
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "its messages carry models and gradient trackers; an attack on the trackers is not modelled yet",
        "privacy": "its gradient trackers would share unnoised gradients; not modelled yet"}
    capabilities: ClassVar = Capabilities(engines=GOSSIP)

    def build(self, ctx):
        return gradient_tracking(self.lr)
