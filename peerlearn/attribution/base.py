"""The attribution family: who contributed what, and whom to trust, scored from what a round already has.

A scorer is a stateful ``(init, update, read)`` triple (state is a dict of tensors, so a checkpoint keeps it and
loads it as data): ``update(state, view)`` sees each round's :class:`RoundView` (the models before and after the
round, the round's mixing matrix, the messages as received), ``read(state)`` gives the scores,

- ``pair_NN[k, j]``: what node k's view says of node j (NaN where it says nothing);
- ``node_N[j]``: node j's score (e.g. its influence on the network's test loss, or its mean reputation).

The engine evaluates ``read`` at every evaluated round: a run's ``metrics.csv`` gains summary columns
(:func:`summary`), its folder one ``attribution/round_<r>.csv`` of per-node scores per evaluated round.
``attribution.score`` names the member; its keys sit beside it (``attribution: {score: dice, hops: 2}``).
"""

from __future__ import annotations

from typing import Callable, ClassVar, NamedTuple

import torch
from pydantic import Field, SerializeAsAny

from peerlearn.spec import BuildContext, Registry, Spec, config_error, slot
from peerlearn.types import Tensor


class RoundView(NamedTuple):
    """What a scorer sees of one round (synchronous engines)."""

    round: int
    before_NP: Tensor  # every node's model at the start of the round
    after_NP: Tensor  # ... and at its end
    W_NN: Tensor  # the round's mixing matrix, dense (W[k, j]: k's weight on j)
    sent_NP: Tensor | None  # the messages of the round's gossip as received (attacks applied), or None


class Scorer(NamedTuple):
    """``init(num_nodes) -> state``; ``update(state, view) -> state``; ``read(state) -> (node_N, pair_NN)``."""

    init: Callable[[int], dict]
    update: Callable[[dict, RoundView], dict]
    read: Callable[[dict], tuple[Tensor, Tensor | None]]


class ScoreSpec(Spec):
    """A scorer; ``build(ctx, tools) -> Scorer`` (:class:`ScoreTools`: each node's probe batches, one model's
    loss, the algorithm's step)."""

    higher_is_better: ClassVar[bool] = True  # a node's score: higher means it contributed more / is trusted more
    max_nodes: ClassVar[int | None] = None  # the largest run it is meant for (its cost grows faster than N)
    needs_tools: ClassVar[bool] = False  # build reads ScoreTools (probe batches): not usable inside a combine step

    def build(self, ctx: BuildContext, tools: "ScoreTools | None") -> Scorer:
        raise NotImplementedError


SCORES = Registry("score", ScoreSpec, "attribution.score", "who contributed what, and whom to trust")


class AttributionSpec(Spec):
    """The attribution section: one scorer (``score``) with its keys, evaluated at every evaluated round."""

    score: SerializeAsAny[ScoreSpec] | None = slot(SCORES, None, "the scorer (none: no attribution)")
    samples: int = Field(32, ge=1, le=100_000, description="each node's probe batch (a seeded sample of its own "
                                                          "data, drawn anew every round)")
    slots: ClassVar = {"score": SCORES}

    @property
    def active(self) -> bool:
        return self.score is not None

    def check(self, cfg) -> None:
        if not self.active:
            return
        algo = cfg.algorithm
        if algo.capabilities.asynchronous:
            raise config_error("attribution.score", f"scores rounds of a synchronous run; {algo.name} runs on the "
                                                    "event engine")
        limit = self.score.max_nodes
        if limit is not None and cfg.num_nodes > limit:
            raise config_error("attribution.score", f"{self.score.name} is meant for at most {limit} nodes (its cost "
                                                    f"grows faster than N), got num_nodes={cfg.num_nodes}")


def summary(node_N: Tensor, honest_N: Tensor) -> dict[str, float]:
    """The row's columns: the honest nodes' mean score, and with Byzantine nodes their mean and ``score_auc``,
    the chance that an honest node outscores a Byzantine one (1: the score separates them, 0.5: it does not)."""
    finite = torch.isfinite(node_N)
    honest, byz = node_N[honest_N & finite].double(), node_N[~honest_N & finite].double()
    out = {"score_honest_mean": float(honest.mean()) if len(honest) else float("nan")}
    if bool((~honest_N).any()):
        out["score_byzantine_mean"] = float(byz.mean()) if len(byz) else float("nan")
        if len(honest) and len(byz):
            wins = (honest[:, None] > byz[None, :]).double() + 0.5 * (honest[:, None] == byz[None, :]).double()
            out["score_auc"] = float(wins.mean())
    return out




class ScoreTools(NamedTuple):
    """What a scorer's ``build`` gets beside the build context."""

    probe: Callable[[int], tuple[Tensor, Tensor]]  # round -> (x_NB, y_NB): each node's own probe batch that round
    loss: Callable  # loss(params_P, x_B, y_B) -> scalar: one model's loss on one batch
    step_size: float  # the algorithm's step per round (lr x local steps): the move a node's data makes
