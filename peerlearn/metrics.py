"""Pure metric functions over stacked models."""

from __future__ import annotations

import torch

from peerlearn.types import Tensor


def accuracy(logits_RTC: Tensor, labels_T: Tensor) -> Tensor:
    """Fraction of correct predictions of every row's model: ``[R]`` in [0, 1]."""
    return (logits_RTC.argmax(-1) == labels_T).double().mean(-1)


def consensus_distance(params_NP: Tensor, max_elements: int = 2**22) -> float:
    """``(1/N) sum_i ||x_i - x_bar||^2``: how far the nodes' models are from their average.

    Accumulated in float64 over chunks of rows of at most ``max_elements`` values: no float64 copy of
    ``params_NP`` (100,000 MLP nodes failed with one at their first evaluation)."""
    n, p = params_NP.shape
    if n == 0:
        return float("nan")
    rows = max(1, max_elements // max(1, p))
    mean_P = torch.zeros(p, dtype=torch.float64)
    for a in range(0, n, rows):  # a float64 chunk's sum over rows is 8x faster than sum(0, dtype=float64)
        mean_P += params_NP[a:a + rows].double().sum(0)
    mean_P /= n
    buf = torch.empty(min(rows, n), p, dtype=torch.float64)
    total = 0.0
    for a in range(0, n, rows):
        chunk = params_NP[a:a + rows]
        dev = buf[:chunk.shape[0]].copy_(chunk).sub_(mean_P).view(-1)
        total += float(torch.dot(dev, dev))
    return total / n


def summarize(values_N: Tensor, prefix: str) -> dict[str, float]:
    """Mean, min, max and (population) std of per-node values, keyed ``{prefix}_mean`` etc."""
    v = values_N.double()
    return {f"{prefix}_mean": float(v.mean()), f"{prefix}_min": float(v.min()),
            f"{prefix}_max": float(v.max()), f"{prefix}_std": float(v.std(unbiased=False))}


def first_reaching(rows: list[dict], target: float, key: str = "acc_mean") -> dict | None:
    """The first evaluated row whose ``key`` reaches ``target`` (e.g. bytes to 90% accuracy), or None."""
    return next((r for r in rows if r.get(key, float("nan")) >= target), None)
