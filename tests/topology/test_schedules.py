"""Time-varying topologies: every schedule's W is doubly stochastic and a pure function of the round."""

import numpy as np
import pytest
import scipy.sparse as sp

from peerlearn.build import build
from peerlearn.engines import simulate
from peerlearn.topology import metropolis_hastings_weights, random_regular_graph, schedules
from tests.conftest import tiny_config

N = 16
SCHEDULES = {
    "random_matching": schedules.random_matching_schedule(N, seed=1),
    "one_peer_exponential": schedules.one_peer_exponential_schedule(N),
    "resample": schedules.resampled_schedule(lambda s: random_regular_graph(N, 3, seed=s),
                                             metropolis_hastings_weights, seed=2),
    "sampled": schedules.sampled_clients_schedule(N, 0.25, seed=3),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_round_is_doubly_stochastic_and_reproducible(name):
    schedule = SCHEDULES[name]
    for round_ in (1, 2, 7):
        W = schedule(round_).toarray()
        assert W.min() >= 0 and np.allclose(W.sum(0), 1) and np.allclose(W.sum(1), 1)
        assert np.array_equal(W, schedule(round_).toarray())  # a pure function of the round
    if name != "one_peer_exponential":
        assert not np.array_equal(schedule(1).toarray(), schedule(2).toarray())


def test_random_matching_pairs_every_node_with_at_most_one_other():
    W = schedules.random_matching_schedule(9, seed=0)(4).toarray()
    off = (W - np.diag(np.diag(W))) > 0
    assert off.sum(1).max() == 1 and off.sum() == 8  # 4 pairs, one node idle
    assert np.array_equal(off, off.T)


def test_one_peer_exponential_averages_exactly_after_log2_n_rounds():
    schedule = schedules.one_peer_exponential_schedule(N)
    x = np.random.default_rng(0).normal(size=(N, 3))
    for round_ in range(1, 5):  # log2(16) = 4
        W = schedule(round_)
        assert (W.toarray() > 0).sum(1).max() == 2  # itself and one peer
        x = W @ x
    assert np.allclose(x, x.mean(0), atol=1e-12)


def test_sequence_cycles_through_the_given_graphs():
    a, b = sp.csr_array(np.eye(3)), sp.csr_array(np.full((3, 3), 1 / 3))
    schedule = schedules.sequence_schedule([a, b])
    assert schedule(1) is a and schedule(2) is b and schedule(3) is a


def test_the_simulator_uses_the_round_s_graph():
    """One-peer exponential: every node sends exactly one message per round."""
    cfg = tiny_config(num_rounds=4, eval_every=4, topology={"schedule": "one_peer_exponential"})
    b = build(cfg)
    row = simulate(b)[-1]
    assert row["bytes_sent_total"] == 4 * 16 * 4 * b.flat.num_params


def test_sequence_schedule_from_edge_list_files(tmp_path):
    ring = tmp_path / "ring.txt"
    ring.write_text("\n".join(f"{i} {(i + 1) % 16}" for i in range(16)))
    star = tmp_path / "star.txt"
    star.write_text("\n".join(f"0 {i}" for i in range(1, 16)))
    cfg = tiny_config(num_rounds=2, eval_every=2, topology={"schedule": "sequence",
                                                            "sequence": [str(ring), str(star)]})
    b = build(cfg)
    assert b.schedule(1).nnz == 16 * 3 and b.schedule(2).nnz == 16 + 2 * 15
    simulate(b)
