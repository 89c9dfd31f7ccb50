"""A runtime model of one training iteration: when does gossip beat an all-reduce?

Per iteration a node computes for ``compute_s`` and communicates a model of ``M`` bytes over an uplink of
``B`` bytes per second with a per-message latency ``a``:

- **ring all-reduce** over ``N`` nodes: ``2 (N - 1)`` messages in sequence, each ``M / N`` bytes, so
  ``2 (N - 1) a + 2 (N - 1) / N * M / B``, and it cannot start before the gradient is ready:
  ``compute_s + comm``;
- **gossip** on a graph of degree ``d``: the node sends its model to each neighbour, in parallel over the
  network but one after the other through its uplink: ``a + d M / B``. With ``overlap`` (combine-then-adapt,
  D-PSGD: the models of the previous step are exchanged while the gradient is computed) the iteration takes
  ``max(compute_s, comm)``, else ``compute_s + comm``.

The all-reduce's latency term grows with ``N`` and its bandwidth term does not; gossip's bandwidth term
grows with ``d`` and its latency term does not. So gossip wins past a crossover latency (or below a
crossover bandwidth), which :func:`crossover_latency` solves. peerlearn's simulated clock charges the
same costs with ``clock.collective_latency: per_hop`` (and the overlap with ``clock.overlap``, for
combine-then-adapt D-SGD), which is how the model is checked
(``tests/engines/test_runtime_model.py``; the figure in ``docs/reproductions.md``).

References:
    Wang, Zhang, Wu & Johansson, "From Promise to Practice: Realizing High-performance Decentralized
    Training", ICLR 2025 (a runtime model of when decentralized training beats all-reduce per iteration);
    Patarasuk & Yuan, "Bandwidth Optimal All-reduce Algorithms for Clusters of Workstations", JPDC 2009
    (the ring all-reduce's cost); Lian et al., NeurIPS 2017 (D-PSGD's overlap of computation and gossip).
"""

from __future__ import annotations

import math


def ring_all_reduce_s(num_nodes: int, model_bytes: float, bandwidth_Bps: float, latency_s: float) -> float:
    """Seconds of one ring all-reduce of ``model_bytes`` over ``num_nodes`` nodes."""
    steps = 2 * max(num_nodes - 1, 0)
    return steps * latency_s + steps / max(num_nodes, 1) * model_bytes / bandwidth_Bps if steps else 0.0


def gossip_s(degree: int, model_bytes: float, bandwidth_Bps: float, latency_s: float) -> float:
    """Seconds for a node to send its model to ``degree`` neighbours through its uplink."""
    return latency_s + degree * model_bytes / bandwidth_Bps if degree else 0.0


def iteration_s(compute_s: float, comm_s: float, overlap: bool = False) -> float:
    """One iteration: computation then communication, or both at once (``overlap``)."""
    return max(compute_s, comm_s) if overlap else compute_s + comm_s


def gossip_minus_all_reduce_s(latency_s: float, num_nodes: int, degree: int, model_bytes: float,
                              bandwidth_Bps: float, compute_s: float, overlap: bool = False) -> float:
    """Gossip's iteration time minus the all-reduce's (negative: gossip is faster)."""
    return (iteration_s(compute_s, gossip_s(degree, model_bytes, bandwidth_Bps, latency_s), overlap)
            - iteration_s(compute_s, ring_all_reduce_s(num_nodes, model_bytes, bandwidth_Bps, latency_s)))


def crossover_latency(num_nodes: int, degree: int, model_bytes: float, bandwidth_Bps: float, compute_s: float = 0.0,
                      overlap: bool = False) -> float:
    """The latency above which gossip on a degree-``degree`` graph beats a ring all-reduce per iteration: 0 when
    gossip is faster at any latency, ``inf`` when never (a single node: there is nothing to all-reduce)."""
    args = (num_nodes, degree, model_bytes, bandwidth_Bps, compute_s, overlap)
    if gossip_minus_all_reduce_s(0.0, *args) <= 0:
        return 0.0
    if 2 * (num_nodes - 1) <= 1:
        return math.inf
    lo, hi = 0.0, 1e-6
    while gossip_minus_all_reduce_s(hi, *args) > 0:  # the difference falls with latency: 2(N-1) - 1 > 0 slopes
        lo, hi = hi, hi * 2
        if hi > 1e9:
            return math.inf
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gossip_minus_all_reduce_s(mid, *args) > 0 else (lo, mid)
        if hi - lo <= 1e-12 * hi:
            break
    return hi
