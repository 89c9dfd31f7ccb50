"""Conformance battery: every mixing rule on every generator (adding a rule or graph is one line)."""

import numpy as np
import pytest
import torch

from peerlearn.engines.comm import SimComm
from peerlearn.topology import (complete_graph, cycle_graph, degrees, max_degree_weights,
                                metropolis_hastings_weights, spectral_gap, star_graph, torus_graph,
                                uniform_weights)
from tests.topology.test_graphs import GENERATORS

RULES = {"metropolis_hastings": metropolis_hastings_weights, "max_degree": max_degree_weights,
         "uniform": uniform_weights}


def _applicable(rule, adj):
    return rule != "uniform" or len(set(degrees(adj))) == 1


@pytest.mark.parametrize("graph", GENERATORS)
@pytest.mark.parametrize("rule", RULES)
def test_rule_is_symmetric_doubly_stochastic_and_follows_edges(rule, graph):
    adj = GENERATORS[graph](16)
    if not _applicable(rule, adj):
        with pytest.raises(ValueError, match="only on regular graphs"):
            RULES[rule](adj)
        return
    W = RULES[rule](adj).toarray()
    assert np.allclose(W, W.T, atol=1e-12)
    assert np.allclose(W.sum(0), 1.0, atol=1e-12) and np.allclose(W.sum(1), 1.0, atol=1e-12)
    assert W.min() >= 0
    off = W - np.diag(np.diag(W))
    assert np.array_equal(off > 0, adj.toarray() > 0)  # weights exactly on the edges


@pytest.mark.parametrize("graph", GENERATORS)
@pytest.mark.parametrize("rule", RULES)
def test_gossip_preserves_the_mean(rule, graph):
    adj = GENERATORS[graph](16)
    if not _applicable(rule, adj):
        return
    comm = SimComm(RULES[rule](adj))
    x = torch.randn(16, 33, generator=torch.Generator().manual_seed(0))
    y = x
    for _ in range(50):
        y = comm.mix(y)
    assert torch.allclose(y.mean(0), x.mean(0), atol=1e-5)
    assert (y - y.mean(0)).norm() < (x - x.mean(0)).norm()  # and it contracts disagreement


def test_metropolis_hastings_values():
    W = metropolis_hastings_weights(star_graph(4)).toarray()
    # hub degree 3, leaves degree 1: every edge weight 1/(1+3)
    assert np.allclose(W[0, 1:], 0.25) and np.isclose(W[0, 0], 0.25) and np.isclose(W[1, 1], 0.75)


def test_spectral_gap_known_values():
    assert spectral_gap(uniform_weights(complete_graph(10))) == pytest.approx(1.0)
    n = 12  # ring with weights 1/3: eigenvalues (1 + 2 cos(2 pi k / n)) / 3
    lam = max(abs((1 + 2 * np.cos(2 * np.pi * k / n)) / 3) for k in range(1, n))
    assert spectral_gap(uniform_weights(cycle_graph(n))) == pytest.approx(1 - lam)


def test_spectral_gap_orders_topologies():
    ring, torus, full = (spectral_gap(metropolis_hastings_weights(g(64)))
                         for g in (cycle_graph, torus_graph, complete_graph))
    assert ring < torus < full
