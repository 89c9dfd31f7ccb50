"""Merging after permutation alignment (DIMAT): match each received model's hidden units to the node's own
by their activations, then average.

Two networks that compute the same function can hold their hidden units in any order, so averaging raw
weights of independently trained (or independently initialised) models mixes unrelated units. Before
averaging, each node ``i`` aligns every neighbour ``j``: for each hidden layer, the activations of both
models on an alignment batch give the correlation matrix ``C_ab = corr(z_a^i, z_b^j)``; the Hungarian
assignment maximising ``sum_a C_{a pi(a)}`` (``scipy.optimize.linear_sum_assignment``) permutes ``j``'s units
(rows of its layer, columns of the next layer, its biases), which leaves ``j``'s function unchanged. The
node's new model is the unweighted mean of its own and the aligned received models.

The alignment batch is a seeded sample of the training inputs shared by all nodes (``align_samples``),
where the paper uses each agent's own data: a simplification that needs no per-node batch in the combine
step. Only dense ReLU networks (``logreg``, ``mlp``) are aligned; a logistic regression has no hidden units
and the rule is then the plain mean.

References:
    Saadati, Pham, Saleem, Waite, Balu, Jiang, Hegde, Sarkar, "DIMAT: Decentralized Iterative Merging-And-Training
    for Deep Learning Models", CVPR 2024.
    Ainsworth, Hayase & Srinivasa, "Git Re-Basin: Merging Models modulo Permutation Symmetries", ICLR 2023
    (activation matching).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from peerlearn.aggregators.mean import masked_mean
from peerlearn.device import from_host, numpy
from peerlearn.models.dense import layer_views
from peerlearn.types import Tensor


def hidden_activations(x_RP: Tensor, layout: list[tuple[int, int]], inputs_TD: Tensor) -> list[Tensor]:
    """Post-ReLU activations ``[R, T, H_l]`` of every hidden layer of every row's network."""
    acts, a = [], inputs_TD.to(x_RP.dtype).expand(x_RP.shape[0], -1, -1)
    for w, b in layer_views(x_RP, layout)[:-1]:
        a = torch.relu(torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2)))
        acts.append(a)
    return acts


def _standardized(z_RTH: Tensor) -> Tensor:
    z = z_RTH - z_RTH.mean(1, keepdim=True)
    return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _unit_rows(w_RHI: Tensor, b_RH: Tensor) -> Tensor:
    rows = torch.cat([w_RHI, b_RH.unsqueeze(2)], 2)
    return rows / rows.norm(dim=2, keepdim=True).clamp_min(1e-12)


def matching_permutations(ref_RP: Tensor, other_RP: Tensor, layout: list[tuple[int, int]],
                          inputs_TD: Tensor) -> list[Tensor]:
    """Per hidden layer, ``perm_RH``: unit ``a`` of ``ref`` is matched to unit ``perm[a]`` of ``other``.

    The cost is the activations' correlation; a 1e-9 share of the cosine between the units' incoming weights
    (the previous layer already matched) only breaks ties, so units dead on the batch still pair up."""
    from scipy.optimize import linear_sum_assignment  # here: scipy.optimize costs 0.2 s of every start-up

    perms, ref_layers, other_layers = [], layer_views(ref_RP, layout), layer_views(other_RP, layout)
    acts = zip(hidden_activations(ref_RP, layout, inputs_TD), hidden_activations(other_RP, layout, inputs_TD))
    for l, (z_ref, z_oth) in enumerate(acts):
        w_oth, b_oth = other_layers[l]
        if perms:  # the incoming columns in ref's order of the previous layer's units
            w_oth = torch.gather(w_oth, 2, perms[-1][:, None, :].expand_as(w_oth))
        corr = torch.bmm(_standardized(z_ref).transpose(1, 2), _standardized(z_oth)).double()
        ties = torch.bmm(_unit_rows(*ref_layers[l]), _unit_rows(w_oth, b_oth).transpose(1, 2)).double()
        cost = numpy(corr + 1e-9 * ties)
        perms.append(from_host(np.stack([linear_sum_assignment(c, maximize=True)[1] for c in cost])))
    return perms


def permute_hidden(x_RP: Tensor, layout: list[tuple[int, int]], perms: list[Tensor]) -> Tensor:
    """A copy of ``x_RP`` with hidden layer ``l``'s units reordered by ``perms[l]`` (the same function)."""
    out = x_RP.clone()
    src, dst = layer_views(x_RP, layout), layer_views(out, layout)
    rows = torch.arange(x_RP.shape[0])[:, None]
    for l, perm in enumerate(perms):
        w, b = src[l]
        dst[l][0].copy_(w[rows, perm])  # this layer's rows (output units)
        dst[l][1].copy_(b[rows, perm])
    for l, perm in enumerate(perms):  # the next layer's columns (inputs), on the rows already permuted
        w_next = dst[l + 1][0]
        w_next.copy_(torch.gather(w_next, 2, perm[:, None, :].expand_as(w_next)))
    return out


def align(ref_RP: Tensor, other_RP: Tensor, layout: list[tuple[int, int]], inputs_TD: Tensor) -> Tensor:
    """``other_RP`` with each row's hidden units permuted to match the same row of ``ref_RP``."""
    if len(layout) < 2:
        return other_RP
    return permute_hidden(other_RP, layout, matching_permutations(ref_RP, other_RP, layout, inputs_TD))


def aligned_mean(x_NKP: Tensor, valid_NK: Tensor, layout: list[tuple[int, int]], inputs_TD: Tensor) -> Tensor:
    """DIMAT's combine rule: every received model aligned to the node's own (column 0), then the mean of
    the valid ones."""
    n, k, p = x_NKP.shape
    ref = x_NKP[:, :1].expand(n, k - 1, p).reshape(-1, p)
    aligned = align(ref, x_NKP[:, 1:].reshape(-1, p), layout, inputs_TD).reshape(n, k - 1, p)
    return masked_mean(torch.cat([x_NKP[:, :1], aligned], 1), valid_NK)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.aggregator: dimat)
# ---------------------------------------------------------------------------------------------
from typing import Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.aggregators.base import AGGREGATORS, AggregatorSpec, training_sample  # noqa: E402
from peerlearn.spec import config_error  # noqa: E402


@AGGREGATORS.register
class DimatSpec(AggregatorSpec):
    """Average after aligning neighbours' hidden units to the own model by activation matching (DIMAT,
    Saadati et al., CVPR 2024)."""

    name: Literal["dimat"] = "dimat"
    align_samples: int = Field(256, ge=2, le=100_000, description="training inputs (a seeded sample, the same at "
                                                                  "every node) whose activations are matched")

    def build(self, ctx):
        from peerlearn.models.dense import dense_layout

        ds = ctx.dataset
        layout = dense_layout(ctx.module)
        if layout is None or not ds.x_train.is_floating_point():
            raise config_error("algorithm.aggregator", "dimat aligns the hidden units of dense ReLU networks "
                                                       "(logreg, mlp); the run's model.name is not one")
        inputs, _ = training_sample(ctx, "dimat", self.align_samples)
        return functools.partial(aligned_mean, layout=layout, inputs_TD=inputs.reshape(len(inputs), -1).float())
