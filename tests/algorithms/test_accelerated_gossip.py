"""Accelerated gossip (the Chebyshev recursion over rounds) and the slowly varying schedule it is measured on."""

import math

import numpy as np
import pytest
import torch

from peerlearn import algorithms, optim
from peerlearn.algorithms.accelerated_gossip import chebyshev_omega, stationary_rate
from peerlearn.build import build
from peerlearn.config import ConfigError
from peerlearn.engines.comm import SimComm
from peerlearn.topology import cycle_graph, metropolis_hastings_weights, random_regular_graph
from peerlearn.topology.mixing import second_largest_eigenvalue
from peerlearn.topology.schedules import resampled_schedule
from tests.conftest import tiny_config


class _NoBatches:
    def next(self, rows=None):
        return None


def _zero_grad(params_NP, batch):
    return torch.zeros(params_NP.shape[0]), torch.zeros_like(params_NP)


def _disagreement(x_NP):
    return float((x_NP.double() - x_NP.double().mean(0)).norm())


def _consensus(W_of_round, x0, rounds, lam=None):
    """Pure gossip (zero gradients) with or without acceleration: the disagreement after every round."""
    alg = algorithms.dsgd(optim.sgd(0.1), acceleration_lambda=lam)
    comm, x, state, out = SimComm(W_of_round(1)), x0.clone(), alg.init(x0), []
    for r in range(1, rounds + 1):
        comm.set_topology(W_of_round(r))
        x, state, _ = alg.step(state, x, _NoBatches(), _zero_grad, comm)
        out.append(_disagreement(x))
    return np.array(out), x


def test_chebyshev_omega_tends_to_the_optimal_heavy_ball_weight():
    lam = 0.9
    assert chebyshev_omega(lam, 1) == 1.0
    assert chebyshev_omega(lam, 2) == pytest.approx(2 / (2 - lam ** 2))
    omega = 2 / (2 - lam ** 2)
    for t in range(3, 60):  # the closed form is the recursion omega_{t+1} = 1 / (1 - lam^2 omega_t / 4)
        omega = 1 / (1 - lam ** 2 * omega / 4)
        assert chebyshev_omega(lam, t) == pytest.approx(omega, rel=1e-12), t
    assert chebyshev_omega(lam, 5000) == pytest.approx(2 / (1 + math.sqrt(1 - lam ** 2)), rel=1e-12)
    assert math.sqrt(chebyshev_omega(lam, 5000) - 1) == pytest.approx(stationary_rate(lam), rel=1e-9)
    with pytest.raises(ValueError, match="acceleration_lambda"):
        chebyshev_omega(1.0, 3)


def test_on_a_static_ring_disagreement_shrinks_at_the_accelerated_rate_and_the_mean_is_kept():
    n = 64
    W = metropolis_hastings_weights(cycle_graph(n))
    lam = second_largest_eigenvalue(W)
    gap = 1 - lam
    x0 = torch.randn(n, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    plain, _ = _consensus(lambda r: W, x0, 200)
    fast, x = _consensus(lambda r: W, x0, 200, lam=lam)
    measured = (fast[199] / fast[99]) ** (1 / 100)
    plain_rate = (plain[199] / plain[99]) ** (1 / 100)
    # the Chebyshev rate (1 - sqrt(1 - lam^2)) / lam, i.e. about 1 - sqrt(2 gap), against plain gossip's lam
    assert abs(math.log(measured) / math.log(stationary_rate(lam)) - 1) < 0.05, (measured, stationary_rate(lam))
    assert 1 - measured > 0.8 * math.sqrt(2 * gap) > 5 * (1 - plain_rate)
    assert abs(plain_rate - lam) < 0.2 * gap
    assert fast[-1] < 1e-3 * plain[-1]
    assert torch.allclose(x.double().mean(0), x0.double().mean(0), atol=1e-5)


def test_a_graph_redrawn_every_round_loses_the_acceleration_and_a_slowly_varying_one_keeps_it():
    """The question of Metelev et al. (ICML 2023), measured: the recursion's memory was mixed by another graph."""
    n, rounds = 64, 30
    make = lambda s: random_regular_graph(n, 3, seed=s)  # noqa: E731
    lam = second_largest_eigenvalue(metropolis_hastings_weights(make(0)))
    x0 = torch.randn(n, 4, generator=torch.Generator().manual_seed(1))
    results = {}
    for every in (1, 20):
        sched = resampled_schedule(make, metropolis_hastings_weights, seed=3, every=every)
        plain, _ = _consensus(sched, x0, rounds)
        fast, x = _consensus(sched, x0, rounds, lam=lam)
        results[every] = fast[-1] / plain[-1]
        assert torch.allclose(x.mean(0), x0.mean(0), atol=1e-5)  # every W doubly stochastic: the mean is kept
    assert results[1] > 1.0, results  # a new graph every round: the memory amplifies disagreement
    assert results[20] < 0.1, results  # a new graph every 20 rounds: 10x less disagreement than plain gossip


def test_resample_every_keeps_each_draw_for_that_many_rounds():
    sched = resampled_schedule(lambda s: random_regular_graph(20, 3, seed=s), metropolis_hastings_weights, seed=0,
                               every=3)
    every_round = resampled_schedule(lambda s: random_regular_graph(20, 3, seed=s), metropolis_hastings_weights,
                                     seed=0)
    same = [(sched(r) != sched(r + 1)).nnz == 0 for r in range(1, 7)]
    assert same == [True, True, False, True, True, False]
    assert (sched(1) != every_round(1)).nnz == 0 and (sched(4) != every_round(2)).nnz == 0


def test_with_training_the_network_mean_takes_heavy_ball_steps():
    """``mean x^{t+1} = omega mean z^t + (1 - omega) mean x^{t-1}``: momentum ``omega - 1`` on the average,
    with lambda computed from the config's static graph."""
    from peerlearn.engines import simulate

    cfg = tiny_config(algorithm={"acceleration": "chebyshev"}, topology={"graph": "ring"})
    b = build(cfg)
    lam = second_largest_eigenvalue(b.W)
    comm, alg, x = SimComm(b.W), b.algorithm, b.params_NP.clone()
    state, means = alg.init(x), [x.double().mean(0)]
    for r in range(1, 5):
        batch = b.batches.next()
        stream = type("One", (), {"next": lambda self, rows=None: batch})()
        trained_mean = (x - 0.1 * b.grad_fn(x, batch)[1]).double().mean(0)  # W z keeps the mean of z
        x, state, _ = alg.step(state, x, stream, b.grad_fn, comm)
        omega = chebyshev_omega(lam, r)
        want = omega * trained_mean + (1 - omega) * means[-2 if r > 1 else -1]
        assert torch.allclose(x.double().mean(0), want, atol=1e-5), r
        means.append(x.double().mean(0))
    assert chebyshev_omega(lam, 4) > 1.2  # really a momentum, not plain gossip
    rows = simulate(build(cfg))
    assert rows[-1]["acc_mean"] > rows[0]["acc_mean"] + 0.1 and math.isfinite(rows[-1]["consensus_distance"])


@pytest.mark.parametrize("sections, field", [
    ({"algorithm": {"acceleration": "chebyshev", "aggregator": "trimmed_mean"}}, "algorithm.aggregator"),
    ({"algorithm": {"acceleration": "chebyshev", "comm_every": 2}}, "algorithm.comm_every"),
    ({"algorithm": {"acceleration": "chebyshev"}, "topology": {"schedule": "random_matching"}},
     "algorithm.acceleration_lambda"),
    ({"algorithm": {"acceleration": "chebyshev", "acceleration_lambda": 1.0}}, "algorithm.acceleration_lambda"),
])
def test_bad_acceleration_settings_name_their_field(sections, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        tiny_config(**sections)
