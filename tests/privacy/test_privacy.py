"""Privacy: clipping, independent and pairwise-cancelling (DECOR) Gaussian noise, and the accountant."""

import math

import networkx as nx
import numpy as np
import pytest
import torch

from peerlearn.config import ConfigError
from peerlearn.build import build
from peerlearn.engines.comm import SimComm
from peerlearn.engines import simulate
from peerlearn.privacy import effective_multipliers, epsilons, gaussian_messages, gaussian_rdp, pairwise_noise
from peerlearn.privacy.accountant import orders
from peerlearn.privacy.gaussian import graph_edges
from peerlearn.topology import graphs, mixing
from tests.conftest import tiny_config


def _regular_comm(n=12, degree=4, seed=0):
    adj = nx.to_scipy_sparse_array(nx.random_regular_graph(degree, n, seed=seed))
    return SimComm(mixing.metropolis_hastings_weights(adj)), adj


def test_pairwise_noise_sums_to_zero_and_has_laplacian_covariance():
    comm, adj = _regular_comm()
    edges = graph_edges(comm.W)
    noise = pairwise_noise(edges, 12, 40_000, 0.5, torch.Generator().manual_seed(0), torch.float64)
    assert noise.sum(0).abs().max() < 1e-12  # every v_ij meets its -v_ij
    cov = (noise @ noise.T / noise.shape[1]).numpy()  # columns are independent draws of the node vector
    laplacian = nx.laplacian_matrix(nx.from_scipy_sparse_array(adj)).toarray()
    assert np.abs(cov - 0.25 * laplacian).max() < 0.05  # Sigma = sigma_pair^2 L, what the accountant assumes


def test_pairwise_noise_leaves_the_network_average_unchanged_in_one_mixing_step():
    comm, _ = _regular_comm()
    x = torch.randn(12, 300, dtype=torch.float64)
    update = torch.randn(12, 300, dtype=torch.float64) * 0.001  # norms / lr ~0.17: below the clip, kept as they are
    privacy = gaussian_messages(clip=1.0, noise_multiplier=0.0, pairwise_multiplier=2.0, lr=0.1)
    noisy, _ = privacy.privatize(update, privacy.init(x), comm)
    assert (noisy - update).norm(dim=1).min() > 10 * update.norm(dim=1).max()  # every message is masked...
    torch.testing.assert_close(comm.mix(x + noisy).mean(0), (x + update).mean(0), rtol=0, atol=1e-12)  # ...the mean is not

    independent = gaussian_messages(clip=1.0, noise_multiplier=2.0, lr=0.1)
    noisy, _ = independent.privatize(update, independent.init(x), comm)
    assert (comm.mix(x + noisy).mean(0) - (x + update).mean(0)).abs().max() > 0.01  # independent noise moves it


def test_updates_are_clipped_in_gradient_units():
    comm, _ = _regular_comm()
    update = torch.randn(12, 50) * 10
    privacy = gaussian_messages(clip=0.5, noise_multiplier=0.0, lr=0.1)
    clipped, _ = privacy.privatize(update, privacy.init(update), comm)
    torch.testing.assert_close(clipped.norm(dim=1), torch.full((12,), 0.05))  # lr * clip
    torch.testing.assert_close(clipped / clipped.norm(dim=1, keepdim=True), update / update.norm(dim=1, keepdim=True))


def test_effective_multipliers_invert_the_noise_covariance():
    comm, adj = _regular_comm()
    edges = graph_edges(comm.W)
    laplacian = nx.laplacian_matrix(nx.from_scipy_sparse_array(adj)).toarray()
    sigma = 0.5 ** 2 * np.eye(12) + 1.5 ** 2 * laplacian
    expected = 1.0 / np.sqrt(np.diag(np.linalg.inv(sigma)))
    np.testing.assert_allclose(effective_multipliers(12, edges, 0.5, 1.5), expected, rtol=1e-10)
    np.testing.assert_allclose(effective_multipliers(12, edges, 0.5, 0.0), 0.5)  # independent noise only
    more = [effective_multipliers(12, edges, 0.5, s).min() for s in (0.1, 1.0, 10.0)]
    assert 0.5 < more[0] < more[1] < more[2]  # the masks only add privacy...
    assert (effective_multipliers(12, edges, 0.0, 3.0) == 0).all()  # ...but alone leave the sum unprotected


def test_sparse_and_dense_factorisations_agree(monkeypatch):
    import peerlearn.privacy.gaussian as gaussian

    adj = graphs.cycle_graph(40)
    edges = graph_edges(mixing.metropolis_hastings_weights(adj))
    dense = effective_multipliers(40, edges, 0.3, 1.0)
    monkeypatch.setattr(gaussian, "_DENSE_MAX", 10)
    np.testing.assert_allclose(effective_multipliers(40, edges, 0.3, 1.0), dense, rtol=1e-9)


def test_gaussian_rdp_is_the_closed_form_and_epsilon_matches_opacus():
    from opacus.accountants import RDPAccountant

    alphas = np.array(orders())
    np.testing.assert_allclose(gaussian_rdp(np.array([1.1]))[0], alphas / (2 * 1.1 ** 2), rtol=1e-12)
    rdp = 1000 * gaussian_rdp(np.array([30.0]))  # 1000 releases at sigma = 30: the optimum is an interior order
    reference = RDPAccountant()
    reference.history = [(30.0, 1.0, 1000)]  # (noise multiplier, sample rate, steps)
    assert epsilons(rdp, 1e-5)[0] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert epsilons(np.zeros((1, len(alphas))), 1e-5)[0] == 0.0  # never sent: nothing spent
    assert math.isinf(epsilons(gaussian_rdp(np.array([0.0])), 1e-5)[0])  # sent without noise


def _private_run(rounds=30, **privacy):
    return simulate(build(tiny_config(num_rounds=rounds, eval_every=rounds, algorithm={"lr": 0.1},
                                      privacy={"clip": 1.0, **privacy})))


def test_a_private_run_reports_the_libraries_epsilon_and_more_noise_spends_less():
    from opacus.accountants import RDPAccountant

    eps = {}
    for sigma in (0.5, 1.0, 2.0, 4.0):
        rows = _private_run(noise_multiplier=sigma)
        assert math.isnan(rows[0]["epsilon"]) or rows[0]["epsilon"] == 0.0
        eps[sigma] = rows[-1]["epsilon"]
    assert eps[0.5] > eps[1.0] > eps[2.0] > eps[4.0] > 0
    reference = RDPAccountant()
    reference.history = [(4.0, 1.0, 30)]  # every node sent in each of the 30 rounds
    assert eps[4.0] == pytest.approx(reference.get_privacy_spent(delta=1e-5, alphas=list(orders()))[0], rel=1e-9)
    assert _private_run(noise_multiplier=1.0)[-1]["acc_mean"] == _private_run(noise_multiplier=1.0)[-1]["acc_mean"]


def test_pairwise_noise_beats_independent_noise_at_equal_per_message_noise():
    # ring: each message carries 2 pairwise masks; 2 * 0.6928^2 + 0.2^2 = 1.0 = the independent variance
    runs = {"independent": {"noise_multiplier": 1.0},
            "pairwise": {"noise_multiplier": 0.2, "pairwise_multiplier": math.sqrt(0.96 / 2)}}
    acc = {name: _private_run(100, **p)[-1]["acc_mean"] for name, p in runs.items()}
    assert acc["pairwise"] > acc["independent"] + 0.1, acc


def test_a_crashed_node_spends_nothing_while_down():
    cfg = tiny_config(num_rounds=20, eval_every=20, privacy={"clip": 1.0, "noise_multiplier": 1.0},
                      faults={"crash_fraction": 0.25, "crash_round": 11})
    b = build(cfg)
    final = {}
    simulate(b, on_checkpoint=lambda snap: final.update(state=snap["state"]))
    rdp = final["state"].privacy.rdp_NA
    alive = torch.from_numpy(b.faults.alive(20))
    per_round = torch.from_numpy(gaussian_rdp(np.array([1.0])))[0]
    torch.testing.assert_close(rdp[alive], (20 * per_round).expand(int(alive.sum()), -1))
    torch.testing.assert_close(rdp[~alive], (10 * per_round).expand(int((~alive).sum()), -1))


@pytest.mark.parametrize("privacy, algorithm, message", [
    ({"noise_multiplier": 1.0}, {}, "privacy.clip: the noise is calibrated"),
    ({"clip": 1.0}, {"name": "push_sum"}, "privacy.clip: privacy noise applies to the messages of dsgd; push_sum: noise on push-sum weights"),
    ({"clip": 1.0}, {"comm_every": 2}, "privacy.clip: rounds without gossip"),
    ({"clip": -1.0}, {}, "privacy.clip"),
    ({"clip": 1.0, "delta": 1.5}, {}, "privacy.delta"),
])
def test_privacy_config_errors_name_the_field(privacy, algorithm, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as err:
        build(tiny_config(privacy=privacy, algorithm=algorithm))
    assert "\n" not in str(err.value)
