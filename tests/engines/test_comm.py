import numpy as np
import torch

from peerlearn.aggregators import masked_mean
from peerlearn.engines.comm import SimComm
from peerlearn.topology import (barabasi_albert_graph, cycle_graph, metropolis_hastings_weights, star_graph,
                                uniform_weights)


def test_mix_equals_matrix_product():
    W = metropolis_hastings_weights(barabasi_albert_graph(30, 2, seed=0))
    x = torch.randn(30, 17, dtype=torch.float32)
    expected = torch.from_numpy(W.toarray()).float() @ x
    assert torch.allclose(SimComm(W).mix(x), expected, atol=1e-5)


def test_mixing_keeps_the_float32_mean():
    """Weights like 1/3 do not sum to one in float32; the difference form keeps the mean anyway."""
    comm = SimComm(uniform_weights(cycle_graph(64)))
    x = torch.randn(64, 1000, generator=torch.Generator().manual_seed(0)) + 5.0
    mean0 = x.double().mean(0)
    for _ in range(200):
        x = comm.mix(x)
    assert float((x.double().mean(0) - mean0).abs().max()) < 2e-5


def test_gather_with_mean_equals_uniform_mixing_on_a_regular_graph():
    comm_u = SimComm(uniform_weights(cycle_graph(12)))
    x = torch.randn(12, 9)
    x_nkp, valid = comm_u.gather(x, include_self=True)
    assert x_nkp.shape == (12, 3, 9) and bool(valid.all())
    assert torch.allclose(masked_mean(x_nkp, valid), comm_u.mix(x), atol=1e-6)


def test_gather_padding_never_leaks():
    comm = SimComm(metropolis_hastings_weights(star_graph(5)))  # hub degree 4, leaves degree 1
    x = torch.arange(5, dtype=torch.float32)[:, None].repeat(1, 3)
    x_nkp, valid = comm.gather(x, include_self=False)
    assert x_nkp.shape == (5, 4, 3) and valid.sum(1).tolist() == [4, 1, 1, 1, 1]
    poisoned = torch.where(valid[..., None], x_nkp, torch.full_like(x_nkp, 1e9))
    means = masked_mean(poisoned, valid)[:, 0]
    assert means.tolist() == [2.5, 0.0, 0.0, 0.0, 0.0]  # hub: mean of 1..4; leaves: the hub (0)


def test_bytes_are_counted_per_sender():
    n, p = 8, 10
    comm = SimComm(metropolis_hastings_weights(star_graph(n)))
    comm.mix(torch.zeros(n, p))
    per = comm.bytes_sent_N.numpy()
    assert per[0] == (n - 1) * 4 * p and np.all(per[1:] == 4 * p)
    comm.gather(torch.zeros(n, p))
    assert comm.bytes_sent_total == 2 * 2 * (n - 1) * 4 * p  # two rounds, one message per edge direction
    rows = torch.tensor([1, 2, 3])
    comm.server_average(torch.zeros(3, p), rows)
    assert comm.bytes_sent_server == 3 * 4 * p
    assert comm.bytes_sent_N[1] == 2 * 4 * p + 4 * p


def test_a_complete_graph_mixes_as_a_mean_equal_to_the_matrix_product():
    """Issue 16: one weight on every link of a complete graph is a mean broadcast, O(N P) instead of
    O(N^2 P): the same numbers as W x (to float32 rounding), for mix and for push, poisoned or not."""
    from peerlearn.topology import complete_graph, max_degree_weights

    for W in (metropolis_hastings_weights(complete_graph(40)), max_degree_weights(complete_graph(40))):
        comm = SimComm(W)
        assert comm._clique is not None
        x = torch.randn(40, 13, generator=torch.Generator().manual_seed(1))
        expected = (torch.from_numpy(W.toarray()) @ x.double()).float()
        torch.testing.assert_close(comm.mix(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(comm.push(x), expected, rtol=1e-5, atol=1e-5)
        assert float((comm.mix(x).double().mean(0) - x.double().mean(0)).abs().max()) < 1e-5


def test_a_complete_graph_with_unequal_weights_takes_the_general_path():
    import scipy.sparse as sp

    dense = np.full((10, 10), 0.05)
    dense[0, 1] = dense[1, 0] = 0.1  # still symmetric and complete, but not one weight
    np.fill_diagonal(dense, 0)
    np.fill_diagonal(dense, 1 - dense.sum(1))
    comm = SimComm(sp.csr_array(dense))
    assert comm._clique is None
    x = torch.randn(10, 4)
    torch.testing.assert_close(comm.mix(x), torch.from_numpy(dense).float() @ x, rtol=1e-5, atol=1e-5)


def test_the_neighbour_table_is_built_only_when_gather_needs_it():
    comm = SimComm(metropolis_hastings_weights(cycle_graph(8)))
    comm.mix(torch.randn(8, 3))
    assert comm._table is None
    comm.gather(torch.randn(8, 3))
    assert comm._table is not None
