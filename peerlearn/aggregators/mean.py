"""The (weighted) mean: plain gossip averaging and FedAvg's aggregation rule."""

from __future__ import annotations

from peerlearn.types import Tensor


def mean(x_KP: Tensor, *, weights_K: Tensor | None = None) -> Tensor:
    """Weighted average of the K received rows (uniform weights by default).

    References:
        McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
        AISTATS 2017 (weighted model averaging).
    """
    if weights_K is None:
        return x_KP.mean(0)
    w = weights_K.to(x_KP.dtype)
    return (w / w.sum()) @ x_KP


def masked_mean(x_NKP: Tensor, valid_NK: Tensor) -> Tensor:
    """Per node, the mean over its valid received rows; padded rows never contribute."""
    w_NK = valid_NK.to(x_NKP.dtype)
    return (w_NK.unsqueeze(-1) * x_NKP).sum(1) / w_NK.sum(1, keepdim=True).clamp_min(1.0)


# ---------------------------------------------------------------------------------------------
# Specs (algorithm.aggregator)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from peerlearn.aggregators.base import AGGREGATORS, AggregatorSpec  # noqa: E402
from peerlearn.spec import Capabilities  # noqa: E402


@AGGREGATORS.register
class GossipSpec(AggregatorSpec):
    """Linear gossip: the weighted sum W x of the round's mixing matrix (Boyd et al., 2006)."""

    name: Literal["gossip"] = "gossip"
    capabilities: ClassVar = Capabilities(linear=True)

    def build(self, ctx):
        return None


@AGGREGATORS.register
class MeanSpec(AggregatorSpec):
    """The unweighted mean of the own model and every received one."""

    name: Literal["mean"] = "mean"
    factory: ClassVar = staticmethod(masked_mean)
