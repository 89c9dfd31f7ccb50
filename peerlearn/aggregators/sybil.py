"""Similarity-based Sybil defences: FoolsGold weights (with SybilWall's fixed weight on the own model), and SybilWall's
probabilistic history gossip that lets a node compare a lone Sybil neighbour with clones it heard of elsewhere."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from peerlearn.types import Tensor


def foolsgold_alpha(hist_NKP: Tensor, ok_NK: Tensor, confidence: float = 1.0, weigh_NK: Tensor | None = None) -> Tensor:
    """``alpha_NK``: FoolsGold's weight of each of a node's histories (steps 1-3 of :func:`foolsgold`) among
    its valid ones ``ok_NK``; 0 for the invalid ones. With ``weigh_NK`` (a subset of ``ok_NK``) every valid
    history counts in the similarities, but only those are weighed (normalised by their own maximum)."""
    hist = F.normalize(hist_NKP, dim=2)
    cs = hist @ hist.transpose(1, 2)  # [N, K, K]
    pair_ok = ok_NK[:, :, None] & ok_NK[:, None, :] & ~torch.eye(hist_NKP.shape[1], dtype=torch.bool)[None]
    cs = cs.masked_fill(~pair_ok, -math.inf)
    v = cs.amax(2).clamp_min(-1.0)  # [N, K]; -1 where a node has a single history
    ratio = (v[:, :, None] / v[:, None, :].clamp_min(1e-12)).clamp(max=1.0)
    pardon = (v[:, :, None] < v[:, None, :]) & (v[:, None, :] > 0)
    cs = torch.where(pardon, cs * ratio, cs)
    weigh = ok_NK if weigh_NK is None else weigh_NK
    alpha = (1.0 - cs.amax(2).clamp_min(-1.0)).clamp(0.0, 1.0).masked_fill(~weigh, 0.0)
    alpha = alpha / alpha.amax(1, keepdim=True).clamp_min(1e-12)
    alpha = alpha.clamp(max=0.99)
    alpha = (confidence * (torch.log(alpha / (1 - alpha)) + 0.5)).clamp(0.0, 1.0)
    return torch.nan_to_num(alpha, nan=0.0).masked_fill(~weigh, 0.0)


def foolsgold(x_NKP: Tensor, valid_NK: Tensor, reference_P: Tensor, confidence: float = 1.0) -> Tensor:
    """Down-weight neighbours whose update histories point the same way (Sybil clones).

    Each neighbour's history is its cumulative update, which telescopes to ``x_j - x_0`` when
    every node starts from the common initial model ``reference_P``. Per receiving node, over its
    valid neighbours (column 0, its own model, keeps weight 1 as in SybilWall):

    1. ``cs_jk`` = cosine similarity of histories, diagonal removed; ``v_j = max_k cs_jk``;
    2. pardoning: ``cs_jk *= v_j / v_k`` where ``v_j < v_k``;
    3. ``alpha_j = clip(1 - max_k cs_jk, 0, 1) / max alpha``, then
       ``clip(confidence * (ln(alpha / (1 - alpha)) + 0.5), 0, 1)`` (alpha = 1 -> 0.99);
    4. output ``(x_own + sum_j alpha_j x_j) / (1 + sum_j alpha_j)``.

    References:
        Fung, Yoon & Beschastnikh, "The Limitations of Federated Learning in Sybil Settings", RAID 2020;
        Werthenbach & Pouwelse, "Towards Sybil Resilience in Decentralized Learning", 2023 (SybilWall).
    """
    own, nbr, ok = x_NKP[:, 0], x_NKP[:, 1:], valid_NK[:, 1:]
    alpha = foolsgold_alpha(nbr - reference_P, ok, confidence)
    return (own + (alpha[..., None] * nbr).sum(1)) / (1.0 + alpha.sum(1, keepdim=True))


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.aggregator)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.aggregators.base import AGGREGATORS, AggregatorSpec  # noqa: E402
from peerlearn.spec import Capabilities, config_error  # noqa: E402


@AGGREGATORS.register
class FoolsGoldSpec(AggregatorSpec):
    """FoolsGold similarity weights against Sybil clones (Fung et al., RAID 2020)."""

    name: Literal["foolsgold"] = "foolsgold"
    factory: ClassVar = staticmethod(foolsgold)
    capabilities: ClassVar = Capabilities(common_init=True)

    def build(self, ctx):  # histories telescope to x_j - x_0 from the common initial model
        return self.rule(reference_P=ctx.reference_P)


# ---------------------------------------------------------------------------------------------
# SybilWall: FoolsGold over direct and gossiped histories
# ---------------------------------------------------------------------------------------------
def sybilwall_combinator(reference_P: Tensor, seed: int, decay: float = 1 / 1.25, confidence: float = 1.0):
    """SybilWall's combine step with its probabilistic history gossip (a
    :class:`~peerlearn.aggregators.reputation.Combinator`).

    Every node keeps a record per node it has heard of: the node's history ``x_p - x_0`` at some round, the hop
    distance ``d`` it came from, and the neighbour that sent it. Each round:

    1. its neighbours' records are refreshed from their messages (``d = 1``);
    2. FoolsGold weights (:func:`foolsgold_alpha`) are computed over *all* its records, neighbours' and distant
       nodes', and the neighbours' current models are averaged with them (own weight 1), so a Sybil neighbour
       looks like the clones the node has heard of elsewhere, even when it is the node's only one;
    3. to each neighbour it forwards one record, chosen with probability proportional to
       ``decay * exp(-decay * (d - 1))`` (near nodes first), never the recipient's own nor one the recipient
       sent; the recipient keeps it at ``d + 1`` if it is newer than what it has and never over a direct record.
       A forward is a message of one history (4 bytes per parameter and 12 of ids), counted in the sender's bytes.

    References:
        Werthenbach & Pouwelse, "Towards Sybil Resilience in Decentralized Learning", 2023 (SybilWall; code:
        ThomasWerthenbach/Sybil-Resilient-Decentralized-Learning).
    """
    from peerlearn.aggregators.reputation import Combinator
    from peerlearn.rng import step_generator

    def init(num_nodes: int) -> dict:
        n, p = num_nodes, reference_P.shape[0]
        return {"hist_NNP": torch.zeros(n, n, p, dtype=reference_P.dtype), "known_NN": torch.zeros(n, n, dtype=torch.bool),
                "round_NN": torch.full((n, n), -1, dtype=torch.int64), "dist_NN": torch.zeros(n, n, dtype=torch.int64),
                "from_NN": torch.full((n, n), -1, dtype=torch.int64)}

    def step(comm, x_NP: Tensor, start_NP: Tensor, state: dict, round_: int):
        comm.record_sent = True  # the messages as received, for the scores this step keeps
        x_NKP, valid = comm.gather(x_NP, include_self=True)
        ids, _ = comm.neighbour_ids()
        n = x_NP.shape[0]
        hist, known = state["hist_NNP"].clone(), state["known_NN"].clone()
        rnd, dist, src = state["round_NN"].clone(), state["dist_NN"].clone(), state["from_NN"].clone()
        rows = torch.arange(n)[:, None].expand_as(ids)[:, 1:][valid[:, 1:]]
        nbrs = ids[:, 1:][valid[:, 1:]]
        sent = comm.sent_NP if comm.sent_NP is not None else x_NP
        hist[rows, nbrs] = (sent[nbrs] - reference_P).to(hist.dtype)  # direct records, refreshed
        known[rows, nbrs], rnd[rows, nbrs], dist[rows, nbrs], src[rows, nbrs] = True, round_, 1, nbrs
        neighbour = torch.zeros_like(known)
        neighbour[rows, nbrs] = True
        alpha_NN = foolsgold_alpha(hist, known, confidence, neighbour)  # similar to any record; neighbours weighed
        alpha = alpha_NN.gather(1, ids[:, 1:]) * valid[:, 1:]
        mixed = (x_NKP[:, 0] + (alpha[..., None] * x_NKP[:, 1:]).sum(1)) / (1.0 + alpha.sum(1, keepdim=True))
        # the history gossip: one record per (sender, recipient) link, kept by the recipient from the next round
        g = step_generator(seed, round_)
        new = (hist.clone(), known.clone(), rnd.clone(), dist.clone(), src.clone())
        record_bytes = 4 * reference_P.shape[0] + 12
        for i, j in zip(rows.tolist(), nbrs.tolist()):  # i sends to its neighbour j (links are symmetric)
            weight = known[i] * torch.exp(-decay * (dist[i] - 1).clamp_min(0).double()) * decay
            weight[j] = 0.0
            weight[src[i] == j] = 0.0
            if float(weight.sum()) <= 0.0:
                continue
            p = int(torch.multinomial(weight, 1, generator=g))
            comm.bytes_sent_N[i] += record_bytes
            direct = new[3][j, p] == 1 and bool(new[1][j, p])
            if p == j or direct or int(rnd[i, p]) <= int(new[2][j, p]):
                continue
            new[0][j, p], new[1][j, p], new[2][j, p] = hist[i, p], True, rnd[i, p]
            new[3][j, p], new[4][j, p] = dist[i, p] + 1, i
        metrics = {"history_records": float(new[1].sum(1).double().mean())}
        return mixed, dict(zip(("hist_NNP", "known_NN", "round_NN", "dist_NN", "from_NN"), new)), metrics

    return Combinator(init, step)


@AGGREGATORS.register
class SybilWallSpec(AggregatorSpec):
    """SybilWall (Werthenbach & Pouwelse, 2023): FoolsGold weights over the histories of the neighbours and of
    distant nodes learned by probabilistic history gossip, so a lone Sybil neighbour is recognised."""

    name: Literal["sybilwall"] = "sybilwall"
    decay: float = Field(0.8, gt=0.0, le=10.0, description="history gossip: a record at distance d is forwarded "
                                                           "with weight decay * exp(-decay * (d - 1)) (1/1.25)")
    capabilities: ClassVar = Capabilities(common_init=True, stateful=True)
    max_nodes: ClassVar = 256  # every node keeps a history per node: N x N x P

    def build(self, ctx):
        if ctx.num_nodes > self.max_nodes:
            raise config_error("algorithm.aggregator", f"sybilwall keeps a history of every node at every node "
                                                       f"(N x N x P); meant for at most {self.max_nodes} nodes, "
                                                       f"got {ctx.num_nodes}")
        return sybilwall_combinator(ctx.reference_P, ctx.seed("sybilwall"), self.decay)
