"""MeritRank: personalised random-walk reputation that bounds what Sybil identities gain.

Every node (the *ego*) ranks the others by random walks over a directed feedback graph (an edge u -> v weighted
by u's positive feedback on v). A walk starts at the ego, at each step goes on with probability ``alpha``
(*transitivity decay*) to an out-neighbour chosen in proportion to the edge weights, and ends when it comes back
to the ego or reaches a node with no out-edges. A node's reputation in the ego's eyes is the expected number of
visits the walk pays it. *Connectivity decay*: when more than ``threshold`` of the visit mass a node gets comes
through one other node (it hangs behind a bridge, as a Sybil region hangs behind its attacker), its reputation is
multiplied by ``1 - beta``.

The reference code estimates the visits by Monte Carlo walks; here they are computed exactly, by one linear
solve per ego (the walk is an absorbing Markov chain), and the through-node fractions by one solve per (ego,
node) with that node removed, so the cost grows as N^4: meant for up to a few hundred nodes.

**The bound on Sybils.** The attacker s controls only its own out-edges (and its Sybils'). A walk's path up to
its first arrival at s is the same with or without Sybils, so the expected number of first arrivals is at most
s's visits with one identity, ``h_1(s)``; after arriving, a walk trapped among s and its Sybils pays at most
``1 + alpha + alpha^2 + ... = 1 / (1 - alpha)`` visits. Whatever the number k of Sybils,

    h_k(s) + sum over Sybils v of h_k(v) <= h_1(s) / (1 - alpha),

and connectivity decay takes a further factor ``1 - beta`` off every Sybil behind s. Sybils that only vouch for
each other are never reached, and change no honest node's reputation.

References:
    Nasrulin, Ishmaev & Pouwelse, "MeritRank: Sybil Tolerant Reputation for Merit-based Tokenomics", BRAINS 2022
    (code: ichorid/meritrank-python).
"""

from __future__ import annotations

import torch

from peerlearn.types import Tensor


def walk_visits(feedback_NN: Tensor, alpha: float, removed: Tensor | None = None) -> Tensor:
    """``h_EN[e, v]``: the expected visits a walk from ego e pays v (v != e), for every ego at once.

    ``removed`` (bool ``[E, N]``): nodes each ego's walks may not enter (connectivity decay's what-if).
    """
    n = feedback_NN.shape[0]
    weights = feedback_NN.double().clamp_min(0.0)
    out = weights.sum(1, keepdim=True)
    step_NN = torch.where(out > 0, weights / out.clamp_min(1e-300), torch.zeros_like(weights))
    egos = torch.arange(n)
    q_ENN = step_NN.expand(n, n, n).clone()
    q_ENN[egos, :, egos] = 0.0  # arriving back at the ego ends the walk (and is not a visit)
    if removed is not None:
        q_ENN = q_ENN * (~removed)[:, None, :] * (~removed)[:, :, None]
    start_EN = q_ENN[egos, egos]  # the first step, from the ego
    # h = alpha * start + alpha * h Q  ->  h (I - alpha Q) = alpha start
    system = torch.eye(n, dtype=torch.float64) - alpha * q_ENN
    return torch.linalg.solve(system.transpose(1, 2), (alpha * start_EN)[..., None])[..., 0]


def meritrank(feedback_NN: Tensor, alpha: float = 0.85, beta: float = 0.0, threshold: float = 0.95) -> Tensor:
    """``R_NN[e, v]``: node v's reputation in ego e's eyes (expected walk visits, connectivity decay applied);
    the diagonal is 0."""
    n = feedback_NN.shape[0]
    visits = walk_visits(feedback_NN, alpha)
    if beta > 0.0 and n > 2:
        through = torch.zeros(n, n, dtype=torch.float64)  # [e, v]: the largest share of v's visits through one node
        for u in range(n):
            removed = torch.zeros(n, n, dtype=torch.bool)
            removed[:, u] = True
            removed[u, u] = False  # an ego's own walks start at it
            without = walk_visits(feedback_NN, alpha, removed)
            share = torch.where(visits > 1e-300, 1.0 - without / visits.clamp_min(1e-300), torch.zeros_like(visits))
            share[:, u] = 0.0  # u's own visits do not pass through u
            share[u] = 0.0  # an ego's walks all start at the ego
            through = torch.maximum(through, share)
        visits = torch.where(through > threshold, (1.0 - beta) * visits, visits)
    visits.fill_diagonal_(0.0)
    return visits


def meritrank_scorer(feedback, alpha: float, beta: float, threshold: float):
    """Reputation from the feedback of another scorer (its ``pair[k, j]``, positive part): ``pair[e, v]`` is v's
    reputation in e's eyes, ``node[v]`` its mean over the other egos."""
    from peerlearn.attribution.base import Scorer

    def read(state: dict):
        _, pair = feedback.read(state)
        reputation = meritrank(torch.nan_to_num(pair, nan=0.0), alpha, beta, threshold)
        n = reputation.shape[0]
        return reputation.sum(0) / max(n - 1, 1), reputation

    return Scorer(feedback.init, feedback.update, read)


# ---------------------------------------------------------------------------------------------
# Spec (attribution.score: meritrank)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.attribution.base import SCORES  # noqa: E402
from peerlearn.attribution.loss_delta import _LossDeltaKeys  # noqa: E402


@SCORES.register
class MeritRankSpec(_LossDeltaKeys):
    """MeritRank (Nasrulin et al., BRAINS 2022): personalised random-walk reputation over the feedback graph of
    the running loss-delta scores, with transitivity (alpha) and connectivity (beta) decay."""

    name: Literal["meritrank"] = "meritrank"
    alpha: float = Field(0.85, gt=0.0, lt=1.0, description="transitivity decay: a walk's chance to go on at each "
                                                           "step")
    beta: float = Field(0.5, ge=0.0, le=1.0, description="connectivity decay: the reputation taken off a node "
                                                         "reached mostly through one other node")
    threshold: float = Field(0.95, gt=0.0, le=1.0, description="the share of a node's visits through one node "
                                                               "above which connectivity decay applies")
    max_nodes: ClassVar = 256  # one solve per (ego, node): N^4

    def build(self, ctx, tools):
        return meritrank_scorer(self.scorer(ctx), self.alpha, self.beta, self.threshold)
