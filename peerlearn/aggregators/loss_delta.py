"""Loss-delta scoring of received models (Gauntlet-style), and the combine rule that drops the worst.

A node scores what a peer sent by what it would do to the node's own model: the loss on a validation batch
before and after moving halfway towards the peer,

    score_ij = L(x_i) - L(x_i + step * (x_j - x_i))        (positive: the peer's model helps)

so a model trained on flipped labels, or noise, scores lowest among the node's neighbours. The combine rule
``loss_delta`` keeps the node's own model and every received model but the ``f`` lowest-scoring ones, and
averages them. The validation batch is a seeded sample of the training set shared by all nodes (a held-out
batch, which the scoring rule allows in place of each node's own data); the scores are recomputed each round
(no running reputation yet).

Gauntlet scores a peer's pseudo-gradient ``Delta_j`` as ``L(theta) - L(theta - beta Delta_j)`` with a step
``beta`` below the learning rate; in model gossip the peer's "update" is ``x_j - x_i`` and ``step`` plays ``beta``.
Gauntlet feeds per-round ranks into a rating and aggregates the top peers; here the rank decides each round.

References:
    Lidin, Sarfi, Pappas, Dare, Belilovsky & Steeves, "Incentivizing Permissionless Distributed Learning of
    LLMs" (Templar), 2025 (Gauntlet's LossScore).
"""

from __future__ import annotations

from typing import Callable

from peerlearn.aggregators.mean import masked_mean
from peerlearn.types import Tensor


def loss_delta_scores(x_NKP: Tensor, valid_NK: Tensor, probe_loss: Callable, batch: tuple[Tensor, Tensor],
                      step: float = 0.5) -> Tensor:
    """``score_NK``: the drop of node n's loss when its model (column 0) moves ``step`` towards column k;
    padded entries score -inf, the own column 0."""
    n, k, _ = x_NKP.shape
    own = x_NKP[:, :1]
    moved = own + step * (x_NKP - own)  # column 0 stays the own model
    x_B, y_B = batch
    loss_NK = probe_loss(moved, x_B.expand(n, *x_B.shape), y_B.expand(n, *y_B.shape))
    scores = loss_NK[:, :1] - loss_NK
    return scores.masked_fill(~valid_NK, float("-inf")).nan_to_num(nan=float("-inf"))


def loss_delta_mean(x_NKP: Tensor, valid_NK: Tensor, probe_loss: Callable, batch: tuple[Tensor, Tensor],
                    f: int = 1, step: float = 0.5) -> Tensor:
    """The mean of the own model and the received ones, without the ``f`` lowest loss-delta scores."""
    scores = loss_delta_scores(x_NKP, valid_NK, probe_loss, batch, step)
    keep = valid_NK.clone()
    if f > 0 and x_NKP.shape[1] > 1:
        received = scores[:, 1:]
        drop = received.topk(min(f, received.shape[1]), dim=1, largest=False).indices + 1
        keep.scatter_(1, drop, False)
    keep[:, 0] = True  # the own model always counts
    return masked_mean(x_NKP, keep)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.aggregator: loss_delta)
# ---------------------------------------------------------------------------------------------
import functools  # noqa: E402
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.aggregators.base import AGGREGATORS, training_sample  # noqa: E402
from peerlearn.aggregators.robust import _Tolerant  # noqa: E402


@AGGREGATORS.register
class LossDeltaSpec(_Tolerant):
    """Drop the f received models that most raise the node's loss when moved towards (Gauntlet-style
    loss-delta scoring), average the rest."""

    name: Literal["loss_delta"] = "loss_delta"
    step: float = Field(0.5, gt=0.0, le=1.0, description="how far towards a peer's model the score moves")
    score_samples: int = Field(256, ge=1, le=100_000, description="training samples (a seeded sample, the same "
                                                                  "at every node) the losses are measured on")
    min_inputs: ClassVar = "nearest_neighbor_mean"  # f + 1: the own model and at least f received ones

    def build(self, ctx):
        self.check_inputs(ctx)  # the graph gives every node more than f inputs
        batch = training_sample(ctx, "loss_delta", self.score_samples)
        return functools.partial(loss_delta_mean, probe_loss=ctx.probe_loss_fn, batch=batch, f=self.f,
                                 step=self.step)
