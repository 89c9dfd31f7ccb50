"""Similarity-based Sybil defence: FoolsGold weights, with SybilWall's fixed weight on the own model."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from peerlearn.types import Tensor


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
    hist = F.normalize(nbr - reference_P, dim=2)
    cs = hist @ hist.transpose(1, 2)  # [N, K-1, K-1]
    pair_ok = ok[:, :, None] & ok[:, None, :] & ~torch.eye(nbr.shape[1], dtype=torch.bool)[None]
    cs = cs.masked_fill(~pair_ok, -math.inf)
    v = cs.amax(2).clamp_min(-1.0)  # [N, K-1]; -1 where a node has a single neighbour
    ratio = (v[:, :, None] / v[:, None, :].clamp_min(1e-12)).clamp(max=1.0)
    pardon = (v[:, :, None] < v[:, None, :]) & (v[:, None, :] > 0)
    cs = torch.where(pardon, cs * ratio, cs)
    alpha = (1.0 - cs.amax(2).clamp_min(-1.0)).clamp(0.0, 1.0).masked_fill(~ok, 0.0)
    alpha = alpha / alpha.amax(1, keepdim=True).clamp_min(1e-12)
    alpha = alpha.clamp(max=0.99)
    alpha = (confidence * (torch.log(alpha / (1 - alpha)) + 0.5)).clamp(0.0, 1.0)
    alpha = torch.nan_to_num(alpha, nan=0.0).masked_fill(~ok, 0.0)
    return (own + (alpha[..., None] * nbr).sum(1)) / (1.0 + alpha.sum(1, keepdim=True))


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.aggregator)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from peerlearn.aggregators.base import AGGREGATORS, AggregatorSpec  # noqa: E402
from peerlearn.spec import Capabilities  # noqa: E402


@AGGREGATORS.register
class FoolsGoldSpec(AggregatorSpec):
    """FoolsGold similarity weights against Sybil clones (Fung et al., RAID 2020)."""

    name: Literal["foolsgold"] = "foolsgold"
    factory: ClassVar = staticmethod(foolsgold)
    capabilities: ClassVar = Capabilities(common_init=True)

    def build(self, ctx):  # histories telescope to x_j - x_0 from the common initial model
        return self.rule(reference_P=ctx.reference_P)
