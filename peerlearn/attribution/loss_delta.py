"""Loss-delta contribution scores (Gauntlet-style): a running score of every peer a node receives from.

Each round node k scores each model it receives from j by what moving towards it does to k's loss on a
validation batch (:func:`peerlearn.aggregators.loss_delta_scores`, the same measure the ``loss_delta`` combine
rule drops models by):

    s_kj = L(x_k) - L(x_k + step * (m_j - x_k))          (positive: j's model lowers k's loss)

and keeps an exponential running mean per pair, ``S_kj <- decay S_kj + (1 - decay) s_kj``, because one round's
score is noisy (Gauntlet feeds per-round ranks into a rating for the same reason). ``m_j`` is the message as
received (a model-poisoning attack's vector, not the attacker's own model), ``x_k`` the receiver's own message.
A node's score is the mean of what its neighbours' running scores say of it.

References:
    Lidin, Sarfi, Pappas, Dare, Belilovsky & Steeves, "Incentivizing Permissionless Distributed Learning of
    LLMs" (Templar), 2025 (Gauntlet's LossScore).
"""

from __future__ import annotations

import torch

from peerlearn.aggregators.loss_delta import loss_delta_scores
from peerlearn.attribution.base import Scorer
from peerlearn.types import Tensor


def neighbour_table(W_NN: Tensor) -> tuple[Tensor, Tensor]:
    """``(idx_NK, valid_NK)``: each node's in-neighbours (W[k, j] > 0, j != k), padded to the widest row."""
    mask = W_NN > 0
    mask.fill_diagonal_(False)
    width = max(int(mask.sum(1).max()), 1)
    idx = mask.float().topk(width, dim=1).indices
    return idx, mask.gather(1, idx)


def round_loss_deltas(x_NP: Tensor, W_NN: Tensor, probe_loss, batch, step: float) -> Tensor:
    """``s_NN[k, j]``: this round's loss-delta score of j's message at k (NaN where k receives nothing from j)."""
    n = x_NP.shape[0]
    idx, valid = neighbour_table(W_NN)
    x_NKP = torch.cat([x_NP[:, None], x_NP[idx]], 1)
    valid_NK = torch.cat([torch.ones(n, 1, dtype=torch.bool), valid], 1)
    s_NK = loss_delta_scores(x_NKP, valid_NK, probe_loss, batch, step)[:, 1:]
    out = torch.full((n, n), float("nan"), dtype=torch.float64)
    rows = torch.arange(n)[:, None].expand_as(idx)
    out[rows[valid], idx[valid]] = s_NK[valid].double()
    return out


def running_mean(old_NN: Tensor, new_NN: Tensor, decay: float) -> Tensor:
    """The exponential running mean of defined entries (NaN: not seen; a first score is taken as it is)."""
    seen, fresh = ~torch.isnan(old_NN), ~torch.isnan(new_NN)
    out = torch.where(seen & fresh, decay * old_NN + (1 - decay) * new_NN, old_NN)
    return torch.where(~seen & fresh, new_NN, out)


def loss_delta_scorer(probe_loss, batch: tuple[Tensor, Tensor], step: float = 0.5, decay: float = 0.9) -> Scorer:
    """The running loss-delta scores (module doc): ``pair[k, j]`` k's running score of j, ``node[j]`` their mean."""

    def init(num_nodes: int) -> dict:
        return {"score_NN": torch.full((num_nodes, num_nodes), float("nan"), dtype=torch.float64)}

    def update(state: dict, view) -> dict:
        x = view.sent_NP if view.sent_NP is not None else view.after_NP
        return {"score_NN": running_mean(state["score_NN"], round_loss_deltas(x, view.W_NN, probe_loss, batch, step),
                                         decay)}

    def read(state: dict):
        scores = state["score_NN"]
        return scores.nanmean(0), scores

    return Scorer(init, update, read)


# ---------------------------------------------------------------------------------------------
# Spec (attribution.score: loss_delta)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.aggregators.base import training_sample  # noqa: E402
from peerlearn.attribution.base import SCORES, ScoreSpec  # noqa: E402


class _LossDeltaKeys(ScoreSpec):
    step: float = Field(0.5, gt=0.0, le=1.0, description="how far towards a peer's model the score moves")
    decay: float = Field(0.9, ge=0.0, lt=1.0, description="the running score's memory per round (0: this round's "
                                                          "score only)")
    score_samples: int = Field(256, ge=1, le=100_000, description="training samples (a seeded sample, the same at "
                                                                  "every node) the losses are measured on")
    max_nodes: ClassVar = 4096  # an N x N score matrix

    def scorer(self, ctx) -> Scorer:
        batch = training_sample(ctx, "attribution_loss_delta", self.score_samples)
        return loss_delta_scorer(ctx.probe_loss_fn, batch, self.step, self.decay)


@SCORES.register
class LossDeltaScoreSpec(_LossDeltaKeys):
    """Running loss-delta scores of received models (Gauntlet's LossScore, Lidin et al., 2025): how much moving
    towards a peer's model lowers a node's validation loss."""

    name: Literal["loss_delta"] = "loss_delta"

    def build(self, ctx, tools):
        return self.scorer(ctx)
