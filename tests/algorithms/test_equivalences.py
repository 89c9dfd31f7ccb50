"""Numerical equivalences between algorithms that must hold exactly (to float tolerance)."""

import numpy as np
import scipy.sparse as sp
import torch

from peerlearn import algorithms, optim
from peerlearn.algorithms.fedavg import sample_clients
from peerlearn.build import build
from peerlearn.engines.comm import SimComm
from peerlearn.topology import complete_graph, cycle_graph, metropolis_hastings_weights, uniform_weights
from tests.conftest import tiny_config


def _run(algorithm, W, rounds=10, seed=0, **cfg):
    """Run `algorithm` on the tiny digits setup with a fresh, identically seeded batch stream."""
    b = build(tiny_config(seed=seed, **cfg))
    comm = SimComm(W)
    params, state = b.params_NP.clone(), algorithm.init(b.params_NP)
    for _ in range(rounds):
        params, state, _ = algorithm.step(state, params, b.batches, b.grad_fn, comm)
    return params, comm


def test_dsgd_on_complete_graph_equals_synchronous_data_parallel_sgd():
    """Uniform weights on a complete graph: mixing is the exact average, so D-SGD (ATC) from a common
    start is synchronous SGD; with local momentum too, because the buffers average linearly."""
    W = uniform_weights(complete_graph(16))
    for momentum in (0.0, 0.9):
        opt = optim.sgd(0.1, momentum=momentum)
        dsgd, _ = _run(algorithms.dsgd(opt, 1, "atc"), W)
        sync, _ = _run(algorithms.centralized(opt, 1, weights_N=None), W)
        assert torch.allclose(dsgd, sync, atol=1e-5), momentum
        assert float((dsgd - dsgd[0]).abs().max()) < 1e-5  # all nodes hold the same model


def test_identity_mixing_equals_local_training():
    n, opt = 16, optim.sgd(0.1, momentum=0.5)
    identity = sp.csr_array(sp.identity(n, format="csr"))
    via_dsgd, comm = _run(algorithms.dsgd(opt, 2, "atc"), identity)
    local, _ = _run(algorithms.local_only(opt, 2), identity)
    assert torch.equal(via_dsgd, local)
    assert comm.bytes_sent_total == 0


def test_cta_is_mixing_plus_the_local_update_from_the_pre_mixing_iterate():
    opt = optim.sgd(0.1)
    W = metropolis_hastings_weights(cycle_graph(16))
    b = build(tiny_config())
    comm = SimComm(W)
    x0 = b.params_NP + 0.01 * torch.randn_like(b.params_NP)
    batch = b.batches.next()
    stream = type("One", (), {"next": lambda self, rows=None: batch})()
    new, _, _ = algorithms.dsgd(opt, 1, "cta").step(algorithms.dsgd(opt).init(x0), x0, stream, b.grad_fn, comm)
    _, grads = b.grad_fn(x0, batch)
    expected = torch.from_numpy(W.toarray()).float() @ x0 - 0.1 * grads
    assert torch.allclose(new, expected, atol=1e-5)
    atc, _, _ = algorithms.dsgd(opt, 1, "atc").step(algorithms.dsgd(opt).init(x0), x0, stream, b.grad_fn, comm)
    assert not torch.allclose(atc, new, atol=1e-6)  # the two orders really differ


def test_full_participation_fedavg_with_one_step_equals_synchronous_sgd():
    n, opt = 16, optim.sgd(0.2)
    W = uniform_weights(complete_graph(n))
    fed, comm = _run(algorithms.fedavg(opt, 1, fraction=1.0), W)
    sync, _ = _run(algorithms.centralized(opt, 1), W)
    assert torch.allclose(fed, sync, atol=1e-5)
    p = fed.shape[1]
    assert comm.bytes_sent_total == 10 * 2 * n * 4 * p  # each round: n uploads + n downloads


def test_fedavg_client_sampling_is_seeded_and_sized():
    a = sample_clients(100, 0.1, seed=3, round_=7)
    assert len(a) == 10 and torch.equal(a, sample_clients(100, 0.1, seed=3, round_=7))
    assert not torch.equal(a, sample_clients(100, 0.1, seed=3, round_=8))
    assert len(sample_clients(5, 0.01, seed=0, round_=0)) == 1


def test_fedavg_weights_clients_by_data_size():
    """One local step from a common model: the new model is the size-weighted average of client models."""
    opt = optim.sgd(0.5)
    b = build(tiny_config(data={"partition": "quantity_skew", "alpha": 0.5}))
    sizes = torch.tensor([len(p) for p in b.parts], dtype=torch.float64)
    comm = SimComm(uniform_weights(complete_graph(16)))
    batch = b.batches.next()
    stream = type("One", (), {"next": lambda self, rows=None: batch})()
    fed = algorithms.fedavg(opt, 1, 1.0, data_sizes_N=sizes)
    new, _, _ = fed.step(fed.init(b.params_NP), b.params_NP, stream, b.grad_fn, comm)
    _, grads = b.grad_fn(b.params_NP, batch)
    w = (sizes / sizes.sum()).float()
    expected = b.params_NP[0] - 0.5 * (w @ grads)
    assert torch.allclose(new[5], expected, atol=1e-6)
    assert not np.isclose(float(sizes.min()), float(sizes.max()))
