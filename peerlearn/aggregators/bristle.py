"""Bristle: a distance-based prioritiser and a performance-based integrator over the output layer.

Bristle's nodes share a frozen, pretrained feature extractor and train and exchange only the output layer, one
column per class. Each round a node

1. **prioritises** the received output layers by their L2 distance to its own: the ``closest`` nearest are kept
   (exploitation) and ``explore`` of the others at random (exploration);
2. **integrates** them class by class, by performance on a small local IID test set: with ``r_c`` its own recall
   of class c and ``r_jc`` a candidate's, ``diff = 10 |r_c - r_jc|``,
   ``score = diff^(3 + r_c)`` if the candidate is better, else ``-diff^(4 + r_c) (1 + penalty_c)`` (``penalty_c``:
   how much worse the candidates before it, nearest first, were on c), floored at -100; the class weight is
   ``max(0, 10 sigmoid(score / 100) - 4)`` times the candidate's certainty, ``max(0, mean - std)`` of its
   recalls over the classes it holds (judged by its best recalls, at least half its highest), and only those
   classes are taken from it; class c's column becomes ``(own_c + sum_j w_jc col_jc) / (1 + sum_j w_jc)``.

A candidate that is better at a class the node lacks gets a weight above 1 for it (the node imports the class);
one that is worse, or uncertain (a Byzantine vector's recalls are all near zero), gets none. Parameters outside
the output layer (the extractor) are the node's own: in the paper they are frozen, so there is nothing to merge.

References:
    Verbraeken, de Vos & Pouwelse, "Bristle: Decentralized Federated Learning in Byzantine, Non-i.i.d.
    Environments", 2021 (code: the Kotlin class ``Bristle`` in the trustchain fedml module).
"""

from __future__ import annotations

from typing import Callable

import torch

from peerlearn.types import Tensor


def class_weights(recall_NC: Tensor, cand_NKC: Tensor, order_NK: Tensor, ok_NK: Tensor) -> Tensor:
    """``w_NKC``: Bristle's integrator weight of each candidate for each class (module doc, step 2).

    ``order_NK``: each candidate's rank by distance (0 = nearest), for the sequential penalty."""
    r = recall_NC[:, None, :]
    diff = 10.0 * (cand_NKC - r).abs()
    worse = (r - cand_NKC).clamp_min(0.0) * ok_NK[..., None]
    # penalty of the candidates before each one in distance order: an exclusive cumulative sum along the order
    by_order = torch.zeros_like(worse).scatter_(1, order_NK[..., None].expand_as(worse), worse)
    before = (by_order.cumsum(1) - by_order).gather(1, order_NK[..., None].expand_as(worse))
    better = cand_NKC > r
    score = torch.where(better, diff.pow(3.0 + r), -diff.pow(4.0 + r) * (1.0 + before)).clamp_min(-100.0)
    weight = (10.0 * torch.sigmoid(score / 100.0) - 4.0).clamp_min(0.0)
    # the classes a candidate holds, judged by its best recalls, and its certainty over them
    selected = cand_NKC >= 0.5 * cand_NKC.amax(2, keepdim=True).clamp_min(1e-12)
    count = selected.sum(2).clamp_min(1)
    mean = (cand_NKC * selected).sum(2) / count
    std = (((cand_NKC - mean[..., None]) * selected).pow(2).sum(2) / count).sqrt()
    certainty = (mean - std).clamp_min(0.0)
    return weight * selected * certainty[..., None] * ok_NK[..., None]


def bristle_combinator(recall_fn: Callable, head: tuple[slice, slice], num_classes: int, seed: int,
                       closest: int = 20, explore: int = 5):
    """Bristle's combine step (a :class:`~peerlearn.aggregators.reputation.Combinator`; stateless, the
    exploration draw seeded by the round). ``recall_fn(params_NKP) -> recall_NKC``: each node's candidates'
    per-class recalls on its local test set; ``head``: the output layer's weight and bias slices."""
    from peerlearn.aggregators.reputation import Combinator
    from peerlearn.rng import step_generator

    w_slice, b_slice = head

    def columns(x: Tensor) -> Tensor:  # [..., P] -> [..., C, H + 1]: each class's output column and bias
        return torch.cat([x[..., w_slice].unflatten(-1, (num_classes, -1)), x[..., b_slice, None]], -1)

    def init(num_nodes: int) -> dict:
        return {}

    def step(comm, x_NP: Tensor, start_NP: Tensor, state: dict, round_: int):
        x_NKP, valid = comm.gather(x_NP, include_self=True)
        n, k, _ = x_NKP.shape
        cols = columns(x_NKP)  # [N, K, C, H + 1]
        dist = (cols - cols[:, :1]).flatten(2).norm(dim=2).masked_fill(~valid, float("inf"))
        dist[:, 0] = float("inf")  # the own model is not a candidate
        nearest = dist.argsort(1)  # candidates by distance, padding last
        rank = torch.empty_like(nearest).scatter_(1, nearest, torch.arange(k).expand(n, k).contiguous())
        keep = (rank < closest) & valid
        keep[:, 0] = False
        rest = valid & ~keep
        rest[:, 0] = False
        if explore > 0 and bool(rest.any()):
            noise = torch.rand(n, k, generator=step_generator(seed, round_)).masked_fill(~rest, 2.0)
            keep |= torch.zeros_like(keep).scatter_(1, noise.argsort(1)[:, :explore], True) & rest
        recall = recall_fn(x_NKP)  # [N, K, C]
        w = class_weights(recall[:, 0], recall, rank, keep)  # [N, K, C]
        merged = (cols[:, 0] + (w[..., None] * cols).sum(1)) / (1.0 + w.sum(1))[..., None]  # [N, C, H + 1]
        out = x_NP.clone()  # outside the output layer: the node's own parameters
        out[:, w_slice] = merged[..., :-1].flatten(1)
        out[:, b_slice] = merged[..., -1]
        return out, state, {"bristle_weight": float(w.sum(1).mean())}

    return Combinator(init, step)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.aggregator: bristle)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.aggregators.base import AGGREGATORS, AggregatorSpec  # noqa: E402
from peerlearn.spec import Capabilities, config_error  # noqa: E402


@AGGREGATORS.register
class BristleSpec(AggregatorSpec):
    """Bristle (Verbraeken et al., 2021): distance prioritiser plus per-class performance integrator on the
    output layer, for non-IID classes under Byzantine peers."""

    name: Literal["bristle"] = "bristle"
    closest: int = Field(20, ge=1, le=10_000, description="received output layers kept by distance (exploitation)")
    explore: int = Field(5, ge=0, le=10_000, description="others kept at random each round (exploration)")
    test_samples: int = Field(100, ge=10, le=100_000, description="each node's local IID test set (a seeded sample "
                                                                  "of the test split) the recalls are measured on")
    capabilities: ClassVar = Capabilities(stateful=True)

    def build(self, ctx):
        from torch.func import vmap

        from peerlearn.models.functional import FlatModel, make_logits_fn

        flat = FlatModel(ctx.module)
        weight, bias = flat.shapes[-2:] if len(flat.shapes) >= 2 else (None, None)
        classes = ctx.dataset.num_classes
        if weight is None or len(weight) != 2 or tuple(bias) != (classes,) or weight[0] != classes:
            raise config_error("algorithm.aggregator", f"bristle merges the output layer class by class; the model's "
                                                       "last parameters are not a linear head over the classes")
        ends = [sum(flat.numels[:i + 1]) for i in range(len(flat.numels))]
        head = (slice(ends[-3] if len(ends) > 2 else 0, ends[-2]), slice(ends[-2], ends[-1]))
        x_test, y_test = ctx.dataset.x_test, ctx.dataset.y_test
        g = torch.Generator().manual_seed(ctx.seed("bristle"))
        idx = torch.stack([torch.randperm(len(y_test), generator=g)[: self.test_samples] for _ in range(ctx.num_nodes)])
        local_x, local_y = x_test[idx], y_test[idx]  # [N, B, ...]: each node's local IID test set
        logits = vmap(vmap(make_logits_fn(flat), in_dims=(0, None)))  # each node's candidates on its own test set
        onehot = torch.nn.functional.one_hot(local_y, classes).float()  # [N, B, C]
        per_class = onehot.sum(1).clamp_min(1.0)  # [N, C]

        def recall(params_NKP):
            with torch.no_grad():
                hits = torch.nn.functional.one_hot(logits(params_NKP, local_x).argmax(-1), classes).float()
            return torch.einsum("nkbc,nbc->nkc", hits, onehot) / per_class[:, None]

        return bristle_combinator(recall, head, classes, ctx.seed("bristle_explore"), self.closest, self.explore)
