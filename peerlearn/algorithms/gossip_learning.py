"""Gossip learning: each node on its own timer sends (model, age) to a random peer, which merges and trains.

The receiver ``j`` of ``(x_i, a_i)`` merges by age weights,
``x_j <- (a_j x_j + a_i x_i) / (a_j + a_i)`` (a plain average while both ages are 0), takes
``a_j <- max(a_j, a_i)``, then runs its local steps and adds the samples it processed to its age
("merge-update"). There is no mixing matrix: pairwise merges are doubly stochastic only in
expectation. The age is one extra value per message.

In the event engine the wakers of a time slice send together; a receiver takes one message per
slice (the first in the slice's random order) and a sender whose peer is already taken retries in
the next slice, as does one whose peer is still training on an earlier message (a receiver trains at
its own speed). Every message carries the sender's model at the start of the slice.

References:
    Ormándi, Hegedűs & Jelasity, "Gossip Learning with Linear Models on Fully Distributed Data",
    Concurrency and Computation 2013 (merge-update, age weights);
    Hegedűs, Danner & Jelasity, "Decentralized Learning Works: An Empirical Comparison of Gossip
    Learning and Federated Learning", JPDC 2021.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from peerlearn.algorithms.local import local_steps
from peerlearn.device import from_host
from peerlearn.rows import put_rows, take_rows
from peerlearn.types import AsyncAlgorithm, Tensor, Transform


class GossipLearningState(NamedTuple):
    age_N: Tensor  # samples each node's model has been trained on (float64)
    opt_state: Any


def first_per_receiver(receivers: np.ndarray) -> np.ndarray:
    """Positions of the first message to each receiver (in the given order); -1 receivers are skipped."""
    valid = np.flatnonzero(receivers >= 0)
    _, first = np.unique(receivers[valid], return_index=True)
    return np.sort(valid[first])


def gossip_learning(optimizer: Transform, num_local_steps: int = 1, batch_size: int = 16,
                    data_N: Tensor | None = None) -> AsyncAlgorithm:
    """Gossip learning (merge-update); ``data_N`` marks nodes with training data (relays' ages do not grow)."""

    def init(params_NP):
        return GossipLearningState(torch.zeros(params_NP.shape[0], dtype=torch.float64),
                                   optimizer.init(params_NP))

    def wake(state, params_NP, wakers, batches, grad_fn, net):
        receivers = net.random_peers(wakers)
        has_peer = receivers >= 0
        keep = first_per_receiver(np.where(has_peer & net.free(np.maximum(receivers, 0)), receivers, -1))
        taken = np.zeros(len(wakers), dtype=bool)
        taken[keep] = True
        net.defer(wakers[~taken & has_peer])  # their peer is training, or already has a message this slice
        if not len(keep):
            return params_NP, state, {"loss": float("nan")}
        s, r = from_host(wakers[keep]), from_host(receivers[keep])
        net.send(wakers[keep], (params_NP.shape[1] + 1) * params_NP.element_size())
        return receive(state, params_NP, r, params_NP[s], state.age_N[s], batches, grad_fn)

    def receive(state, params_NP, r, x_RP, a_R, batches, grad_fn):
        """Receivers ``r`` (distinct rows) merge the models ``x_RP`` of ages ``a_R`` into theirs and train."""
        a_r = state.age_N[r]
        total = a_R + a_r
        w_s = torch.where(total > 0, a_R / total.clamp_min(1e-300), torch.full_like(total, 0.5))
        w_s = w_s.to(params_NP.dtype)[:, None]
        merged = params_NP[r] * (1 - w_s) + x_RP * w_s
        trained, opt_rows, loss = local_steps(merged, take_rows(state.opt_state, r), optimizer, batches, grad_fn,
                                              num_local_steps, r)
        params_NP = params_NP.clone()
        params_NP[r] = trained
        gained = num_local_steps * batch_size * (torch.ones(len(r), dtype=torch.float64) if data_N is None
                                                 else data_N[r].double())
        age = state.age_N.clone()
        age[r] = torch.maximum(a_R, a_r) + gained
        return params_NP, GossipLearningState(age, put_rows(state.opt_state, r, opt_rows)), {
            "loss": float(loss.mean())}

    return AsyncAlgorithm(init, wake, timer=True, receive=receive)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: gossip_learning)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, Asynchronous  # noqa: E402
from peerlearn.spec import Capabilities  # noqa: E402


@ALGORITHMS.register
class GossipLearningSpec(Asynchronous):
    """Gossip learning: on its timer a node sends its model to a random peer, which merges by age and
    trains (Ormandi et al., 2013; Hegedus et al., 2021)."""

    name: Literal["gossip_learning"] = "gossip_learning"
    capabilities: ClassVar = Capabilities(engines=frozenset({"simulator", "p2p"}), asynchronous=True)
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "its asynchronous sends are not poisoned yet",
        "privacy": "noise on asynchronous sends is not built yet"}

    def build(self, ctx):
        trains = None if ctx.relay_N is None else from_host(~ctx.relay_N)
        return gossip_learning(self.transform(), self.num_local_steps, self.batch_size, trains)
