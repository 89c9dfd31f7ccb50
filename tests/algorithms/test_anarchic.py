"""Anarchic FL: equal to FedAvg when every worker does the same work, and free of the objective
inconsistency of plain averaging when workers choose different amounts."""

import pytest
import torch

from peerlearn import algorithms, optim
from peerlearn.build import build
from peerlearn.config import ConfigError
from peerlearn.engines import simulate
from peerlearn.engines.comm import SimComm
from peerlearn.topology import complete_graph, uniform_weights
from tests.conftest import tiny_config


def _run(algorithm, rounds=8):
    b = build(tiny_config(seed=0))
    comm = SimComm(uniform_weights(complete_graph(16)))
    params, state = b.params_NP.clone(), algorithm.init(b.params_NP)
    for _ in range(rounds):
        params, state, _ = algorithm.step(state, params, b.batches, b.grad_fn, comm)
    return params, comm


def test_with_every_worker_doing_the_same_work_every_round_it_is_fedavg():
    n, k = 16, 3
    for momentum in (0.0, 0.9):
        opt = optim.sgd(0.1, momentum=momentum)
        fed, fed_comm = _run(algorithms.fedavg(opt, k, fraction=1.0))
        afa, afa_comm = _run(algorithms.anarchic(opt, torch.ones(n, dtype=torch.float64), torch.full((n,), k),
                                                 server_lr=float(k)))
        raw, _ = _run(algorithms.anarchic(opt, torch.ones(n, dtype=torch.float64), torch.full((n,), k),
                                          normalize=False))
        assert torch.allclose(afa, fed, atol=1e-5), momentum
        assert torch.allclose(raw, fed, atol=1e-6), momentum
        assert afa_comm.bytes_sent_total == fed_comm.bytes_sent_total


class _Rows:
    """A 'batch' that is just the rows asked for: the quadratic below needs no data."""

    def next(self, rows=None):
        return rows


def _quadratic_fixed_point(participation_N, steps_N, rounds=3000, **kwargs):
    """Workers with f_i(x) = ||x - c_i||^2 / 2 (full gradients): where does the global model settle?"""
    n = len(steps_N)
    c = torch.linspace(-1, 1, n, dtype=torch.float64).unsqueeze(1) * torch.tensor([[1.0, -2.0]], dtype=torch.float64)

    def grad_fn(params_RP, rows):
        rows = torch.arange(n) if rows is None else rows
        return ((params_RP - c[rows]) ** 2).sum(1) / 2, params_RP - c[rows]

    alg = algorithms.anarchic(optim.sgd(0.01), participation_N, steps_N, seed=4, **kwargs)
    comm = SimComm(uniform_weights(complete_graph(n)))
    x = torch.zeros(n, 2, dtype=torch.float64)
    state = alg.init(x)
    for _ in range(rounds):
        x, state, _ = alg.step(state, x, _Rows(), grad_fn, comm)
    return float((x[0] - c.mean(0)).norm())  # distance to the optimum of the average objective


@pytest.mark.integration
def test_normalising_by_the_work_removes_the_objective_inconsistency_of_plain_averaging():
    """Workers whose effort differs (1 or 10 local steps, tied to their objective): plain averaging settles at a
    step-weighted point, AFA near the true optimum (Yang et al., ICML 2022; FedNova's inconsistency)."""
    n = 8
    steps = torch.tensor([1, 1, 1, 1, 10, 10, 10, 10])
    every = torch.ones(n, dtype=torch.float64)
    plain = _quadratic_fixed_point(every, steps, normalize=False)
    afa_cd = _quadratic_fixed_point(every, steps, server_lr=5.0)
    assert afa_cd < 0.1 * plain, (afa_cd, plain)
    # workers who also choose how often to join (0.2 .. 1): AFA-CS's memory averages every worker, not
    # the frequent ones more often
    often = torch.linspace(0.2, 1.0, n, dtype=torch.float64)
    plain_anarchy = _quadratic_fixed_point(often, steps, normalize=False)
    afa_cs = _quadratic_fixed_point(often, steps, server_lr=5.0, reuse_updates=True)
    afa_cd_anarchy = _quadratic_fixed_point(often, steps, server_lr=5.0)
    assert afa_cs < 0.1 * plain_anarchy, (afa_cs, plain_anarchy)
    # AFA-CD averages whoever arrives: frequent workers weigh more, a participation bias AFA-CS does not have
    assert afa_cs < 0.1 * afa_cd_anarchy < 0.1 * plain_anarchy * 10, (afa_cs, afa_cd_anarchy, plain_anarchy)


def test_a_config_runs_and_the_policies_are_seeded():
    cfg = tiny_config(algorithm={"name": "anarchic", "num_local_steps": 4, "steps_min": 1, "participation_min": 0.3,
                                 "participation_max": 0.9, "server_lr": 2.0})
    spec = cfg.algorithm
    from peerlearn.spec import DataContext

    p1, k1 = spec.policies(DataContext.of(cfg))
    p2, k2 = spec.policies(DataContext.of(cfg))
    assert torch.equal(p1, p2) and torch.equal(k1, k2)
    assert 0.3 <= float(p1.min()) and float(p1.max()) <= 0.9 and set(k1.tolist()) <= {1, 2, 3, 4}
    rows = simulate(build(cfg))
    assert rows[-1]["acc_mean"] > rows[0]["acc_mean"] + 0.2
    assert rows[-1]["acc_std"] == 0.0  # one global model


@pytest.mark.parametrize("algorithm, field", [
    ({"name": "anarchic", "participation_min": 0.9, "participation_max": 0.5}, "algorithm.participation_min"),
    ({"name": "anarchic", "num_local_steps": 2, "steps_min": 3}, "algorithm.steps_min"),
    ({"name": "anarchic", "server_lr": 0}, "algorithm.server_lr"),
])
def test_bad_policies_name_their_field(algorithm, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        tiny_config(algorithm=algorithm)
