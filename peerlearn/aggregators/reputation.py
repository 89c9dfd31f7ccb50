"""Reputation-weighted combining: any running scorer's view of a node's neighbours weights or filters them.

A combinator, not one rule per pairing: the ``score`` slot names a member of the attribution family
(:mod:`peerlearn.attribution`) whose running per-pair scores ``S[i, j]`` (node i's view of neighbour j, built
from the rounds so far) decide node i's combine step this round:

- ``filter``: drop the ``f`` received models with the lowest scores, gossip-average the rest (the own model
  and the kept ones, their W weights renormalised); a neighbour not scored yet is kept;
- ``weight``: gossip weights scaled by trust, ``W_ij * clip(S[i, j] / max_j S[i, j], 0, 1)`` (the own weight
  kept; a neighbour not scored yet keeps its weight), renormalised.

After the combine the scorer sees the round (its models before and after, W, the messages as received) and
updates, so a score is history: Gauntlet aggregates the peers its rating ranks highest, over rounds, for the
same reason (one round's loss score is noisy).

References:
    Lidin, Sarfi, Pappas, Dare, Belilovsky & Steeves, "Incentivizing Permissionless Distributed Learning of
    LLMs" (Templar), 2025 (Gauntlet: rating-ranked aggregation).
    Nasrulin, Ishmaev & Pouwelse, "MeritRank: Sybil Tolerant Reputation for Merit-based Tokenomics", BRAINS
    2022 (reputation for peer selection and aggregation weights).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from peerlearn.types import Tensor


class Combinator(NamedTuple):
    """A combine step with state across rounds: ``init(num_nodes) -> state``;
    ``step(comm, x_NP, start_NP, state, round_) -> (x_NP, state, metrics)`` (``start_NP``: the models at the
    round's start; ``metrics``: extra per-round values for the rows). Needs ``comm.neighbour_ids()`` and
    ``comm.dense_W()`` (the simulator's comm)."""

    init: Callable[[int], Any]
    step: Callable[..., tuple[Tensor, Any]]


def trust_weights(W_NK: Tensor, trust_NK: Tensor, valid_NK: Tensor, mode: str, f: int) -> Tensor:
    """``weights_NK`` of the combine (module doc): column 0 is the own model, its W weight always kept."""
    received = valid_NK.clone()
    received[:, 0] = False
    scored = received & ~torch.isnan(trust_NK)
    w = W_NK * valid_NK
    if mode == "filter":
        if f > 0 and bool(scored.any()):
            drop = torch.where(scored, trust_NK, torch.inf).topk(min(f, trust_NK.shape[1]), dim=1, largest=False)
            dropped = torch.zeros_like(valid_NK).scatter_(1, drop.indices, True) & scored
            w = w.masked_fill(dropped, 0.0)
        return w
    best = torch.where(scored, trust_NK, -torch.inf).amax(1, keepdim=True)  # the most trusted neighbour
    scale = torch.where(best > 0, (trust_NK / best.clamp_min(1e-30)).clamp(0.0, 1.0), torch.zeros_like(trust_NK))
    return w * torch.where(scored, scale, torch.ones_like(scale))  # own model and unscored neighbours: 1


def reputation_combinator(scorer, mode: str = "filter", f: int = 1) -> Combinator:
    """Combine each node's own and received models weighted or filtered by ``scorer``'s running pair scores
    (module doc); ``scorer`` is an :class:`~peerlearn.attribution.base.Scorer`."""
    from peerlearn.attribution.base import RoundView

    def init(num_nodes: int) -> dict:
        return scorer.init(num_nodes)

    def step(comm, x_NP: Tensor, start_NP: Tensor, state: dict, round_: int):
        comm.record_sent = True  # the messages as received, for the scores this step keeps
        x_NKP, valid = comm.gather(x_NP, include_self=True)
        ids, _ = comm.neighbour_ids()
        W_NN = comm.dense_W().to(x_NP.device)
        _, pair_NN = scorer.read(state)
        trust = pair_NN.to(x_NP.dtype).gather(1, ids)
        w = trust_weights(W_NN.gather(1, ids).to(x_NP.dtype), trust, valid, mode, f)
        mixed = (w[..., None] * x_NKP).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-30)
        return mixed, scorer.update(state, RoundView(round_, start_NP, mixed, W_NN, comm.sent_NP)), {}

    return Combinator(init, step)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.aggregator: reputation)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field, SerializeAsAny  # noqa: E402

from peerlearn.aggregators.base import AGGREGATORS, AggregatorSpec  # noqa: E402
from peerlearn.attribution.base import SCORES, ScoreSpec  # noqa: E402
from peerlearn.spec import Capabilities, config_error, slot  # noqa: E402


@AGGREGATORS.register
class ReputationSpec(AggregatorSpec):
    """Combine weighted or filtered by a running reputation (any attribution scorer: loss_delta, meritrank),
    as Gauntlet aggregates its top-rated peers (Lidin et al., 2025)."""

    name: Literal["reputation"] = "reputation"
    score: SerializeAsAny[ScoreSpec] = slot(SCORES, "loss_delta", "the scorer whose running pair scores decide "
                                                                 "(loss_delta, meritrank)")
    mode: Literal["filter", "weight"] = Field("filter", description="filter: drop the f lowest-scored received "
                                              "models; weight: scale gossip weights by trust")
    f: int = Field(1, ge=0, description="filter: received models dropped per node and round")
    slots: ClassVar = {"score": SCORES}
    capabilities: ClassVar = Capabilities(stateful=True)

    def build(self, ctx):
        if self.score.needs_tools:
            usable = [n for n, c in SCORES.items() if not c.needs_tools]
            raise config_error("algorithm.score", f"{self.score.name} needs each node's probe batches, which a "
                                                  f"combine step does not have; use {', '.join(usable)}")
        return reputation_combinator(self.score.build(ctx, None), self.mode, self.f)
