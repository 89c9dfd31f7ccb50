import numpy as np
import pytest
import torch

from peerlearn.engines.async_gossip import pairwise_gossip
from peerlearn.topology import graphs, random_graphs


@pytest.mark.parametrize("graph", ["torus", "random_regular"])
def test_async_pairwise_gossip_converges_to_the_initial_mean(graph):
    n = 64
    adj = graphs.torus_graph(n) if graph == "torus" else random_graphs.random_regular_graph(n, 4, seed=1)
    x0 = torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x, trace = pairwise_gossip(x0, adj, duration_s=400.0, period_s=1.0, slice_s=0.25, seed=2)
    torch.testing.assert_close(x.sum(0), x0.sum(0))  # every exchange preserves the sum
    assert float((x - x0.mean(0)).abs().max()) < 1e-4
    assert trace.disagreement[0] > 1e-1 > 1e-4 > trace.disagreement[-1]
    assert trace.exchanges > 0.8 * n * 400 / 2  # about one wake per node per second, two nodes per exchange


def test_busy_peers_defer_and_slow_nodes_wake_less():
    n = 32
    adj = graphs.complete_graph(n)
    slow = np.ones(n)
    slow[:8] = 10.0
    x0 = torch.zeros(n, 1, dtype=torch.float64)
    x0[0] = 1.0
    _, coarse = pairwise_gossip(x0, adj, duration_s=50.0, slice_s=1.0, seed=0)
    assert coarse.retries > 0  # a one-second slice holds ~32 wakers: some find their peer busy
    # fine slices (few collisions): wakes expected 24 x 50 + 8 x 5 = 1240 with slow nodes, 32 x 50 = 1600 without
    _, trace = pairwise_gossip(x0, adj, duration_s=50.0, slice_s=0.02, slowdown_N=slow, seed=0)
    _, even = pairwise_gossip(x0, adj, duration_s=50.0, slice_s=0.02, seed=0)
    assert 1240 * 0.85 < trace.exchanges < 1240 * 1.1 and 1600 * 0.85 < even.exchanges < 1600 * 1.1
    a, b = pairwise_gossip(x0, adj, duration_s=5.0, seed=4), pairwise_gossip(x0, adj, duration_s=5.0, seed=4)
    assert torch.equal(a[0], b[0]) and a[1].exchanges == b[1].exchanges
