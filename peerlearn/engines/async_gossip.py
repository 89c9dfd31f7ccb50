"""Asynchronous pairwise gossip driven by per-node clocks, with the events of a time slice batched.

Every node wakes on its own Poisson clock (mean period ``period_s`` times its slowdown), picks a
random neighbour and the two average their rows: ``x_i, x_j <- (x_i + x_j) / 2``. The exchange
preserves the network sum exactly, so on a connected graph all rows converge to the initial mean.

Batching: time advances in slices of ``slice_s``. The nodes whose clock fires in a slice are
shuffled and paired greedily with the neighbour each picked; a node already in a pair this slice
is busy, and a waker whose peer is busy keeps its due time and retries in the next slice (as a
real node waits for a busy peer). The disjoint pairs of a slice are applied in one indexed
operation, so a slice costs O(pairs * P) whatever N is.

References:
    Boyd, Ghosh, Prabhakar & Shah, "Randomized Gossip Algorithms", IEEE Trans. Inf. Theory 2006.
    Lian et al., "Asynchronous Decentralized Parallel Stochastic Gradient Descent", ICML 2018
    (the same pairwise averaging interleaved with local SGD steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from peerlearn.device import from_host
from peerlearn.engines.async_net import AsyncNet
from peerlearn.topology.clique import as_csr
from peerlearn.types import Tensor


@dataclass
class GossipTrace:
    """What a run of :func:`pairwise_gossip` did."""

    times_s: list[float] = field(default_factory=list)  # end of each recorded slice
    disagreement: list[float] = field(default_factory=list)  # max_i ||x_i - mean||_inf at that time
    exchanges: int = 0  # pairwise averages performed
    retries: int = 0  # wake-ups deferred because the peer was busy


def pairwise_gossip(x_NP: Tensor, adjacency: sp.csr_array, duration_s: float, period_s: float = 1.0,
                    slice_s: float = 0.1, slowdown_N: np.ndarray | None = None, seed: int = 0,
                    record_every: int = 10) -> tuple[Tensor, GossipTrace]:
    """Run asynchronous pairwise averaging for ``duration_s`` simulated seconds; returns the rows and a trace."""
    if slice_s <= 0 or period_s <= 0:
        raise ValueError(f"slice_s and period_s must be > 0, got {slice_s}, {period_s}")
    adj = as_csr(adjacency)
    n = adj.shape[0]
    if (np.diff(adj.indptr) == 0).any():
        raise ValueError("pairwise_gossip: every node needs a neighbour (isolated nodes never average)")
    net = AsyncNet(adj, seed)
    rng = net.rng
    mean_period = period_s * (np.ones(n) if slowdown_N is None else np.asarray(slowdown_N, dtype=np.float64))
    due = rng.exponential(mean_period)
    x = x_NP.clone()
    mean = x.mean(0, keepdim=True)
    trace = GossipTrace()
    steps = int(np.ceil(duration_s / slice_s))
    for k in range(steps):
        end = (k + 1) * slice_s
        wakers = np.flatnonzero(due < end)
        if len(wakers):
            wakers = rng.permutation(wakers)
            peers = net.random_peers(wakers)
            a, b = _disjoint_pairs(wakers, peers, n)
            if len(a):
                ia, ib = from_host(a), from_host(b)
                avg = (x[ia] + x[ib]) * 0.5
                x[ia], x[ib] = avg, avg
            done = np.zeros(n, dtype=bool)
            done[a] = True
            fired = wakers[done[wakers]]
            due[fired] += rng.exponential(mean_period[fired])
            trace.exchanges += len(a)
            trace.retries += len(wakers) - len(a)
        if (k + 1) % record_every == 0 or k == steps - 1:
            trace.times_s.append(end)
            trace.disagreement.append(float((x - mean).abs().max()))
    return x, trace


def _disjoint_pairs(wakers: np.ndarray, peers: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching in the given (shuffled) order: keep (waker, peer) when neither is taken yet."""
    busy = np.zeros(n, dtype=bool)
    a, b = [], []
    for i, j in zip(wakers.tolist(), peers.tolist()):
        if not busy[i] and not busy[j]:
            busy[i] = busy[j] = True
            a.append(i)
            b.append(j)
    return np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
