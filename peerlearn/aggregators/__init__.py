"""Aggregators: ``fn(x_KP, *, weights_K=None, **hyper) -> x_P`` and batched ``fn(x_NKP, valid_NK) -> x_NP``.

Robust rules (median, Krum, ...) arrive with the robustness issue; the mean is here so the
gather path is built and tested from the start.
"""

from peerlearn.aggregators.mean import masked_mean, mean

__all__ = ["masked_mean", "mean"]
