"""Clique-structured topologies (issue 16): a complete graph, a sampled block and a complete graph that lost
nodes are held as their members, and give what their explicit sparse matrices give."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from peerlearn.build import build, build_topology
from peerlearn.engines import simulate
from peerlearn.engines.comm import SimComm
from peerlearn.topology import mixing, schedules
from peerlearn.topology.clique import Clique, as_csr
from peerlearn.topology.directed import column_stochastic_weights
from peerlearn.topology.graphs import complete_graph, degrees, from_edges, is_connected
from peerlearn.world.clock import _row_max
from peerlearn.world.faults import FaultPlan, alive_timeline
from tests.conftest import tiny_config

RULES = [mixing.metropolis_hastings_weights, mixing.max_degree_weights, column_stochastic_weights]


def _explicit_complete(n):
    i, j = np.triu_indices(n, k=1)
    return from_edges(n, i, j)


@pytest.mark.parametrize("n", [1, 2, 5, 33])
def test_the_complete_clique_is_the_complete_graph(n):
    adj = complete_graph(n)
    assert isinstance(adj, Clique)
    assert (as_csr(adj) != _explicit_complete(n)).nnz == 0
    assert adj.nnz == n * (n - 1) == as_csr(adj).nnz
    assert np.array_equal(degrees(adj), degrees(_explicit_complete(n)))
    assert is_connected(adj)


@pytest.mark.parametrize("rule", RULES + [mixing.uniform_weights])
def test_mixing_rules_on_a_clique_equal_the_rules_on_its_links(rule):
    adj = complete_graph(12)
    W = rule(adj)
    assert isinstance(W, Clique)
    np.testing.assert_allclose(W.toarray(), rule(_explicit_complete(12)).toarray(), atol=1e-15)
    assert mixing.spectral_gap(W) == pytest.approx(mixing.spectral_gap(as_csr(W)), abs=1e-9)


@pytest.mark.parametrize("rule", RULES)
def test_a_clique_among_some_nodes_has_the_weights_of_its_explicit_graph(rule):
    members = np.array([1, 4, 5, 9])
    adj = Clique(11, members)
    np.testing.assert_allclose(rule(adj).toarray(), rule(as_csr(adj)).toarray(), atol=1e-15)
    assert not is_connected(adj)
    assert mixing.spectral_gap(rule(adj)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="regular"):
        mixing.uniform_weights(adj)


@pytest.mark.parametrize("members", [None, np.array([0, 3, 4, 7, 8, 12])])
def test_simcomm_on_a_clique_equals_simcomm_on_its_csr(members):
    n, p = 14, 9
    W = mixing.metropolis_hastings_weights(Clique(n, members))
    x = torch.randn(n, p, generator=torch.Generator().manual_seed(3))
    fast, slow = SimComm(W), SimComm(as_csr(W))
    assert fast._clique is not None and (members is None or slow._clique is None)
    torch.testing.assert_close(fast.mix(x), slow.mix(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast.push(x), slow.push(x), rtol=1e-6, atol=1e-6)
    expected = (torch.from_numpy(W.toarray()) @ x.double()).float()
    torch.testing.assert_close(SimComm(W).mix(x), expected, rtol=1e-5, atol=1e-5)
    (got, valid), (want, want_valid) = fast.gather(x), slow.gather(x)
    assert torch.equal(valid, want_valid) and torch.equal(got[valid], want[want_valid])
    assert torch.equal(fast.bytes_sent_N, slow.bytes_sent_N)  # 3 sends each, counted from the links
    assert float(fast.bytes_sent_N.max()) == 3 * 4 * p * (n - 1 if members is None else len(members) - 1)


def test_the_sampled_schedule_is_a_clique_of_the_sampled_nodes():
    n = 20
    sched = schedules.sampled_clients_schedule(n, 0.3, seed=4)
    for r in (1, 2, 7):
        W = sched(r)
        assert isinstance(W, Clique) and W.num_members == 6
        dense = W.toarray()
        np.testing.assert_allclose(dense.sum(0), 1.0)
        np.testing.assert_allclose(dense.sum(1), 1.0)
        np.testing.assert_allclose(dense[np.ix_(W.members, W.members)], 1.0 / 6)
        others = np.setdiff1d(np.arange(n), W.members)
        assert np.array_equal(dense[np.ix_(others, others)], np.eye(len(others)))


def test_a_complete_graph_with_crashes_stays_a_clique_of_the_survivors():
    n = 10
    crash = np.zeros(n, dtype=bool)
    crash[[2, 7]] = True
    timeline = alive_timeline(n, 6, crash_N=crash, crash_round=2, recover_round=4)
    plan = FaultPlan(timeline, mixing.metropolis_hastings_weights, seed=1)
    W0 = mixing.metropolis_hastings_weights(complete_graph(n))
    for round_ in range(1, 6):
        fast, slow = plan.at(round_, W0), plan.at(round_, as_csr(W0))
        assert isinstance(fast.W, Clique)
        np.testing.assert_allclose(fast.W.toarray(), slow.W.toarray(), atol=1e-15)
        assert np.array_equal(fast.joined, slow.joined)
        rejoin = plan.rejoin_sources(fast.joined, complete_graph(n), fast.alive_N.numpy(), round_)
        want = plan.rejoin_sources(slow.joined, _explicit_complete(n), slow.alive_N.numpy(), round_)
        assert all(np.array_equal(a, b) for a, b in zip(rejoin, want))
    # link failures need every link: the explicit graph, with the same draws
    lossy = FaultPlan(timeline, mixing.metropolis_hastings_weights, link_failure=0.3, message_loss=0.1, seed=1)
    np.testing.assert_allclose(lossy.at(3, W0).W.toarray(), lossy.at(3, as_csr(W0)).W.toarray(), atol=1e-15)


def test_the_clock_waits_for_the_slowest_clique_member():
    rng = np.random.default_rng(0)
    ready = rng.random(9)
    senders = np.where(rng.random(9) < 0.7, ready, -np.inf)
    for W in (Clique(9, off=1 / 9, diag=1 / 9, rest=1.0), Clique(9, [0, 2, 3], off=1 / 3, diag=1 / 3, rest=1.0)):
        np.testing.assert_array_equal(_row_max(W, senders, ready), _row_max(as_csr(W), senders, ready))


@pytest.mark.parametrize("sets", [
    {"faults": {"crash_fraction": 0.25, "crash_round": 3, "recover_round": 8}},
    {"clock": {"step_time_s": 0.1, "straggler_fraction": 0.25}},
    {"threat": {"num_byzantine": 3, "attack": "gaussian", "collusion": "neighbors"},
     "algorithm": {"name": "dsgd", "aggregator": "trimmed_mean", "f": 3}},
])
def test_a_run_on_the_complete_clique_equals_the_run_on_its_explicit_graph(sets):
    cfg = tiny_config(num_rounds=10, topology={"graph": "complete"}, **sets)
    built, other = build(cfg), build(cfg)  # one build per run: the sampler is consumed
    assert isinstance(built.W, Clique) and isinstance(built.adjacency, Clique)
    explicit = other._replace(W=as_csr(other.W), adjacency=as_csr(other.adjacency))
    for fast, slow in zip(simulate(built), simulate(explicit), strict=True):
        for key in ("acc_mean", "loss_mean", "consensus_distance", "bytes_sent_total", "sim_time_s", "alive_nodes"):
            assert fast[key] == pytest.approx(slow[key], rel=1e-5, abs=1e-7, nan_ok=True), key


def test_a_complete_graph_of_sixteen_thousand_nodes_is_built_in_linear_memory():
    built_adj, W = build_topology(tiny_config(num_nodes=16384, topology={"graph": "complete"}))
    assert isinstance(W, Clique) and W.off == pytest.approx(1 / 16384)
    assert not isinstance(built_adj, sp.sparray)
