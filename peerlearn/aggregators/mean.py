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
