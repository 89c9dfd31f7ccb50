"""A decentralized blocklist from accusations: nodes accuse neighbours on local evidence, accusations flood,
and every node drops the peers its blocklist rule proves Byzantine from its combine step.

**Evidence.** Node i accuses neighbour j once its running loss-delta score of j (the attribution scorer
:mod:`peerlearn.attribution.loss_delta`) has been kept ``patience`` rounds and is below ``-margin``: moving
halfway towards j's messages raises i's validation loss by more than ``margin`` on average. The rule is *sound*
when honest nodes never accuse honest ones (a margin above the honest spread of the score).

**Flooding.** An accusation is signed by its accuser (it cannot be forged) and flooded: every node forwards a
new one to all its neighbours once, so node v knows accusation (a -> b) ``dist(a, v)`` rounds after it was made.
Each forward is a message of ``accusation_bytes`` (two 4-byte ids and a 64-byte Ed25519 signature), counted in
the sender's bytes. (Byzantine nodes relay like the others here: one dropping them would only delay what an
honest path carries.)

**The rule.** With at most ``F`` Byzantine nodes (``algorithm.f``), node v is blocked when the accusations
prove it: if v were honest, each of its accusers would be Byzantine (an honest node accuses no honest one), and
so would one endpoint of every other accusation; a maximum matching M of the accusations not touching v or its
accusers has disjoint edges, each with its own Byzantine endpoint, so v honest implies at least
``|accusers(v)| + |M|`` Byzantine nodes. When that exceeds ``F``, v is Byzantine. Every node computes the same
list from the same accusations (the graph matching of the paper); a sound evidence rule never blocks an honest
node, whatever Byzantine nodes accuse. A Byzantine node accused by two honest nodes is blocked once the
accusations against the others are matched too, which an (F+1)-connected graph gives (every Byzantine node then
has two honest neighbours).

References:
    Wardega, von Hippel, Tron, Nita-Rotaru & Li, "Byzantine Resilience at Swarm Scale: A Decentralized Blocklist
    Protocol from Inter-robot Accusations", AAMAS 2023.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import torch
from scipy.sparse.csgraph import shortest_path

from peerlearn.types import Tensor

ACCUSATION_BYTES = 72  # accuser id, accused id (4 bytes each), Ed25519 signature (64 bytes)


def proven_byzantine(accusations: list[tuple[int, int]], f: int) -> set[int]:
    """The nodes the accusations ``(accuser, accused)`` prove Byzantine when at most ``f`` are (module doc)."""
    accusers: dict[int, set[int]] = {}
    for a, b in accusations:
        accusers.setdefault(b, set()).add(a)
    blocked = set()
    for v, acc in accusers.items():
        if len(acc) > f:
            blocked.add(v)
            continue
        gone = acc | {v}
        rest = nx.Graph((a, b) for a, b in accusations if a not in gone and b not in gone)
        if len(acc) + len(nx.max_weight_matching(rest, maxcardinality=True)) > f:
            blocked.add(v)
    return blocked


def blocklist_combinator(scorer, f: int, margin: float, patience: int, accusation_bytes: int = ACCUSATION_BYTES):
    """The blocklist as a combine step (a :class:`~peerlearn.aggregators.reputation.Combinator`): gossip
    weights of blocked peers set to zero, the rest renormalised; the state keeps the running scores, when each
    pair was first scored, and each accusation's round."""
    from peerlearn.aggregators.reputation import Combinator
    from peerlearn.attribution.base import RoundView

    cache: dict = {}  # the graph's hop distances (a static graph: the aggregator refuses a schedule)

    def init(num_nodes: int) -> dict:
        inf = torch.full((num_nodes, num_nodes), float("inf"), dtype=torch.float64)
        return {"scores": scorer.init(num_nodes), "scored_since": inf.clone(), "accused_at": inf.clone()}

    def distances(W_NN: Tensor) -> np.ndarray:
        if "dist" not in cache:
            adjacency = (W_NN.cpu().numpy() > 0).astype(np.float64)
            np.fill_diagonal(adjacency, 0.0)
            cache["dist"] = shortest_path(adjacency, unweighted=True)
        return cache["dist"]

    def blocked_by(known: np.ndarray, accused_at: np.ndarray) -> np.ndarray:
        """``blocked_NN[v, j]``: node v's list, from the accusations it knows (memoised per set known)."""
        n = known.shape[0]
        out = np.zeros((n, n), dtype=bool)
        memo: dict[bytes, set[int]] = {}
        for v in range(n):
            key = known[v].tobytes()
            if key not in memo:
                a, b = np.nonzero(known[v])
                memo[key] = proven_byzantine(list(zip(a.tolist(), b.tolist())), f)
            out[v, list(memo[key])] = True
        return out

    def step(comm, x_NP: Tensor, start_NP: Tensor, state: dict, round_: int):
        comm.record_sent = True  # the messages as received, for the scores this step keeps
        x_NKP, valid = comm.gather(x_NP, include_self=True)
        ids, _ = comm.neighbour_ids()
        W_NN = comm.dense_W().to(x_NP.device)
        dist = distances(W_NN)
        accused_at = state["accused_at"].cpu().numpy()
        made = np.isfinite(accused_at)
        # node v knows accusation (a -> b) dist(a, v) rounds after it was made: known_VAB
        arrival = accused_at[None, :, :] + dist.T[:, :, None]
        blocked = blocked_by(arrival <= round_, accused_at)
        drop = torch.as_tensor(blocked, device=x_NP.device).gather(1, ids)
        drop[:, 0] = False  # a node never drops itself
        w = W_NN.gather(1, ids).to(x_NP.dtype) * (valid & ~drop)
        mixed = (w[..., None] * x_NKP).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-30)
        # the round's flooding: every node that learns (or makes) an accusation this round forwards it
        learns = (arrival == round_) & made[None]
        degree = (W_NN.cpu().numpy() > 0).sum(1) - 1
        sends_N = learns.sum((1, 2)) * degree
        comm.bytes_sent_N += torch.as_tensor(sends_N * float(accusation_bytes), dtype=comm.bytes_sent_N.dtype)
        # the scores see the round; new evidence becomes accusations (made now, known from the next round)
        scores = scorer.update(state["scores"], RoundView(round_, start_NP, mixed, W_NN, comm.sent_NP))
        _, pair = scorer.read(scores)
        pair = pair.cpu()
        since = torch.where(torch.isfinite(state["scored_since"]) | torch.isnan(pair), state["scored_since"],
                            torch.full_like(pair, float(round_)))
        evidence = (pair < -margin) & (round_ - since >= patience) & ~torch.isfinite(state["accused_at"])
        accused = torch.where(evidence, torch.full_like(since, float(round_ + 1)), state["accused_at"])
        metrics = {"blocked_peers": float(blocked.sum(1).mean()), "accusations": float(torch.isfinite(accused).sum()),
                   "accusation_bytes": float(sends_N.sum() * accusation_bytes)}
        return mixed, {"scores": scores, "scored_since": since, "accused_at": accused}, metrics

    return Combinator(init, step)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.aggregator: blocklist)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.aggregators.base import AGGREGATORS  # noqa: E402
from peerlearn.aggregators.robust import _Tolerant  # noqa: E402
from peerlearn.spec import Capabilities  # noqa: E402


@AGGREGATORS.register
class BlocklistSpec(_Tolerant):
    """Decentralized blocklist from flooded accusations (Wardega et al., AAMAS 2023): peers the accusations prove
    Byzantine (at most f of them) are dropped from every node's combine step."""

    name: Literal["blocklist"] = "blocklist"
    margin: float = Field(0.5, ge=0.0, description="accuse a neighbour whose running loss-delta score is below "
                                                    "-margin (how much moving halfway towards it raises the loss)")
    patience: int = Field(5, ge=0, le=100_000, description="rounds a neighbour is scored before it can be accused")
    decay: float = Field(0.9, ge=0.0, lt=1.0, description="the running score's memory per round")
    score_samples: int = Field(256, ge=1, le=100_000, description="training samples (a seeded sample, the same at "
                                                                  "every node) the losses are measured on")
    capabilities: ClassVar = Capabilities(stateful=True)

    def build(self, ctx):
        from peerlearn.attribution.loss_delta import LossDeltaScoreSpec  # (attribution imports this package)

        scorer = LossDeltaScoreSpec(decay=self.decay, score_samples=self.score_samples).build(ctx, None)
        return blocklist_combinator(scorer, self.f, self.margin, self.patience)
