import numpy as np
import pytest
import scipy.sparse as sp
import torch

from peerlearn.config import ConfigError
from peerlearn.build import build
from peerlearn.engines.comm import SimComm
from peerlearn.rows import freeze_rows
from peerlearn.world.faults import FaultPlan, alive_timeline, contiguous_groups
from peerlearn.engines import simulate
from peerlearn.topology import graphs, mixing, random_graphs
from tests.conftest import tiny_config


def _plan(n, rounds=10, **kwargs):
    alive_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in ("crash_N", "crash_round", "recover_round",
                                                                 "churn_leave", "churn_join", "late_N", "join_round")}
    return FaultPlan(alive_timeline(n, rounds, **alive_kw), mixing.metropolis_hastings_weights, **kwargs)


def test_crash_leaves_survivors_doubly_stochastic_and_isolates_the_dead():
    n = 24
    adj = random_graphs.barabasi_albert_graph(n, 2, seed=0)
    crash = np.zeros(n, dtype=bool)
    crash[np.argsort(-graphs.degrees(adj))[:6]] = True  # the six hubs
    plan = _plan(n, crash_N=crash, crash_round=3, recover_round=6)
    W0 = mixing.metropolis_hastings_weights(adj)
    for round_ in (2, 3, 5, 6):
        rf = plan.at(round_, W0)
        W = rf.W.toarray()
        alive = rf.alive_N.numpy()
        assert np.array_equal(alive, ~crash if 3 <= round_ < 6 else np.ones(n, dtype=bool))
        np.testing.assert_allclose(W.sum(0), 1.0, atol=1e-12)
        np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-12)
        np.testing.assert_allclose(W, W.T, atol=1e-15)
        assert np.all(W[np.ix_(~alive, ~alive)] == np.eye(int((~alive).sum())))  # the dead talk to nobody
        assert not W[np.ix_(alive, ~alive)].any()
    assert plan.at(6, W0).joined.tolist() == np.flatnonzero(crash).tolist()
    assert np.array_equal(plan.at(3, W0).W.toarray(), mixing.metropolis_hastings_weights(
        sp.csr_array(adj.toarray() * np.outer(~crash, ~crash))).toarray())  # weights recomputed on survivors


def _disagreement_operator(plan, W0, n, samples):
    """Spectral radius of E[(PW) (x) (PW)], the exact per-round decay of E||x - mean||^2 under i.i.d. W."""
    P = np.eye(n) - 1.0 / n
    M = np.zeros((n * n, n * n))
    for r in range(samples):
        A = P @ plan.at(r, W0).W.toarray()
        M += np.kron(A, A)
    return float(np.abs(np.linalg.eigvals(M / samples)).max())


@pytest.mark.slow  # acceptance-size: 13 s a case
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_link_failures_slow_ring_consensus_as_the_expected_spectral_gap_predicts(p):
    n, rounds, runs = 10, 30, 300
    W0 = mixing.metropolis_hastings_weights(graphs.cycle_graph(n))
    rho = _disagreement_operator(_plan(n, 3000, link_failure=p, seed=12345), W0, n, 3000)
    rho_0 = np.max(np.abs(np.linalg.eigvalsh(W0.toarray()))[:-1]) ** 2  # no failures: lambda_2^2
    assert rho > rho_0  # failures slow consensus ...
    x0 = np.random.default_rng(0).normal(size=(n, runs))
    x0 -= x0.mean(0)
    err = np.zeros(rounds + 1)
    x = x0.copy()
    for run in range(runs):  # each run its own failure pattern
        plan = _plan(n, rounds, link_failure=p, seed=run)
        v = x[:, run]
        err[0] += v @ v
        for r in range(1, rounds + 1):
            v = plan.at(r, W0).W @ v
            assert abs(v.sum()) < 1e-9  # ... but every surviving W still preserves the mean
            err[r] += v @ v
    rate = (np.log(err[rounds]) - np.log(err[10])) / (rounds - 10)  # past the transient
    assert rate == pytest.approx(np.log(rho), rel=0.15)  # ... at the rate the expected operator predicts


def test_alive_timeline_crash_late_join_and_churn():
    n = 2000
    crash = np.arange(n) < 10
    late = (np.arange(n) >= 10) & (np.arange(n) < 20)
    a = alive_timeline(n, 400, crash_N=crash, crash_round=5, recover_round=8, late_N=late, join_round=3,
                       churn_leave=0.1, churn_join=0.3, seed=1)
    churn_free = alive_timeline(n, 10, crash_N=crash, crash_round=5, recover_round=8, late_N=late, join_round=3)
    assert churn_free[4, :10].all() and not churn_free[5:8, :10].any() and churn_free[8:, :10].all()
    assert not churn_free[:3, 10:20].any() and churn_free[3:, 10:20].all() and churn_free[:, 20:].all()
    # churn: a two-state chain whose stationary up-fraction is join / (leave + join) = 0.75
    assert a[100:, 20:].mean() == pytest.approx(0.75, abs=0.01)
    assert np.array_equal(a, alive_timeline(n, 400, crash_N=crash, crash_round=5, recover_round=8, late_N=late,
                                            join_round=3, churn_leave=0.1, churn_join=0.3, seed=1))


def test_partition_cuts_cross_group_links_until_it_heals_and_conserves_each_groups_mass():
    n = 12
    W0 = mixing.metropolis_hastings_weights(graphs.cycle_graph(n))
    groups = contiguous_groups(n, 3)
    plan = _plan(n, groups_N=groups, partition_rounds=(2, 5))
    x = np.random.default_rng(0).normal(size=n)
    for r in range(2, 5):
        W = plan.at(r, W0).W.toarray()
        assert not W[groups[:, None] != groups[None, :]].any()
        y = W @ x
        for g in range(3):
            assert y[groups == g].sum() == pytest.approx(x[groups == g].sum())
    assert np.array_equal(plan.at(1, W0).W.toarray(), W0.toarray())
    assert np.array_equal(plan.at(5, W0).W.toarray(), W0.toarray())


def test_message_loss_keeps_rows_stochastic_but_not_columns():
    n = 30
    W0 = mixing.metropolis_hastings_weights(random_graphs.erdos_renyi_graph(n, 0.3, seed=0))
    W = _plan(n, message_loss=0.3, seed=4).at(1, W0).W.toarray()
    np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-12)
    assert np.abs(W.sum(0) - 1.0).max() > 0.05 and (W >= 0).all()
    assert (W0.toarray() > 0).sum() > (W > 0).sum()


def test_rejoining_node_copies_an_alive_neighbour():
    n = 16
    adj = graphs.cycle_graph(n)
    late = np.zeros(n, dtype=bool)
    late[[3, 9]] = True
    plan = _plan(n, late_N=late, join_round=4)
    rf = plan.at(4, mixing.metropolis_hastings_weights(adj))
    dst, src = plan.rejoin_sources(rf.joined, adj, rf.alive_N.numpy(), 4)
    assert dst.tolist() == [3, 9]
    assert all(abs(int(s) - int(d)) == 1 for s, d in zip(src, dst))


def test_freeze_rows_only_touches_per_node_tensors():
    new = {"x": torch.ones(4, 3), "shared": torch.ones(3), "count": torch.ones(4), "k": 7}
    old = {"x": torch.zeros(4, 3), "shared": torch.zeros(3), "count": torch.zeros(4), "k": 6}
    out = freeze_rows(new, old, torch.tensor([True, False, False, True]))
    assert out["x"][:, 0].tolist() == [0, 1, 1, 0] and out["count"].tolist() == [0, 1, 1, 0]
    assert out["shared"].tolist() == [1, 1, 1] and out["k"] == 7


def test_collectives_skip_down_nodes():
    comm = SimComm(num_nodes=4)
    x = torch.arange(8.0).reshape(4, 2)
    comm.set_alive(torch.tensor([True, False, True, False]))
    assert comm.all_reduce_mean(x).tolist() == [2.0, 3.0]
    assert comm.server_average(x[[1, 2]], torch.tensor([1, 2])).tolist() == [4.0, 5.0]
    assert comm.multicast_mean(x[[1, 3]], torch.tensor([1, 3]), torch.tensor([0, 2])) is None
    assert comm.server_average(x[[3]], torch.tensor([3])) is None
    assert comm.bytes_sent_N[[1, 3]].tolist() == [0.0, 0.0]


def test_crashed_nodes_keep_their_model_and_the_rest_learn():
    cfg = tiny_config(num_nodes=16, num_rounds=12, eval_every=4, model={"same_init": False},
                      topology={"graph": "torus"}, algorithm={"momentum": 0.9, "num_local_steps": 2},
                      faults={"crash_fraction": 0.25, "crash_round": 1})
    b = build(cfg)
    crashed = ~b.faults.alive(1)
    final = {}
    rows = simulate(b, on_finish=lambda p: final.update(p=p))
    assert torch.equal(final["p"][torch.from_numpy(crashed)], b.params_NP[torch.from_numpy(crashed)])
    assert not torch.equal(final["p"][torch.from_numpy(~crashed)], b.params_NP[torch.from_numpy(~crashed)])
    assert [r["alive_nodes"] for r in rows] == [16, 12, 12, 12]
    assert rows[-1]["acc_alive_mean"] > rows[-1]["acc_mean"]  # the crashed hold their untrained models


def test_dsgd_keeps_learning_after_half_the_nodes_crash_and_recovers_after_they_return():
    cfg = tiny_config(num_nodes=32, num_rounds=90, eval_every=10, topology={"graph": "torus"},
                      data={"partition": "dirichlet", "alpha": 0.5}, algorithm={"lr": 0.2},
                      faults={"crash_fraction": 0.5, "crash_round": 30, "recover_round": 60})
    rows = {r["round"]: r for r in simulate(build(cfg))}
    assert rows[40]["alive_nodes"] == 16 and rows[90]["alive_nodes"] == 32
    assert rows[60]["acc_alive_mean"] > rows[30]["acc_alive_mean"]  # the survivors keep learning
    # returning nodes copy a neighbour: everyone is back near the survivors' accuracy soon after
    assert rows[70]["acc_mean"] > rows[50]["acc_mean"]
    assert rows[90]["acc_mean"] > rows[60]["acc_alive_mean"] - 0.02


@pytest.mark.parametrize("algorithm", [{"name": "fedavg", "fraction": 0.5}, {"name": "modest", "sample_size": 4},
                                       {"name": "diloco"}])
def test_server_and_sampling_algorithms_run_under_crashes(algorithm):
    cfg = tiny_config(num_nodes=16, num_rounds=20, eval_every=20, topology={"graph": "complete"},
                      algorithm={**algorithm, "lr": 0.3, "num_local_steps": 5},
                      faults={"crash_fraction": 0.5, "crash_round": 5})
    rows = simulate(build(cfg))
    assert rows[-1]["alive_nodes"] == 8 and rows[-1]["acc_alive_mean"] > rows[0]["acc_alive_mean"] + 0.1


def test_relay_nodes_never_train():
    cfg = tiny_config(num_nodes=16, num_rounds=5, eval_every=5, model={"same_init": False},
                      algorithm={"name": "local", "momentum": 0.9}, topology={"graph": "barabasi_albert"},
                      data={"relay_fraction": 0.25})
    b = build(cfg)
    final = {}
    simulate(b, on_finish=lambda p: final.update(p=p))
    relay = torch.from_numpy(b.relay_N)
    assert int(relay.sum()) == 4 and all(len(b.parts[i]) == 0 for i in np.flatnonzero(b.relay_N))
    deg = graphs.degrees(b.adjacency)
    assert deg[b.relay_N].min() >= deg[~b.relay_N].max()  # relays are the hubs
    assert torch.equal(final["p"][relay], b.params_NP[relay])
    assert not torch.equal(final["p"][~relay], b.params_NP[~relay])


@pytest.mark.parametrize("faults, data, message", [
    ({"crash_fraction": 0.2, "crash_round": 5, "recover_round": 5}, {}, "faults.recover_round"),
    ({"partition_groups": 2, "partition_round": 4, "heal_round": 3}, {}, "faults.heal_round"),
    ({"churn_join": 0.5}, {}, "faults.churn_join"),
    ({"crash_fraction": 0.2, "crash_among": "relays"}, {}, "faults.crash_among"),
    ({"link_failure": 1.5}, {}, "faults.link_failure"),
    ({"crash_fraction": 0.2}, {"relay_fraction": 0.2, "local_test_fraction": 0.2}, "data.local_test_fraction"),
])
def test_fault_config_errors_name_the_field(faults, data, message):
    with pytest.raises(ConfigError, match=message):
        build(tiny_config(faults=faults, data=data))


def test_uniform_mixing_under_faults_is_refused():
    with pytest.raises(ConfigError, match="topology.mixing"):
        tiny_config(topology={"mixing": "uniform"}, faults={"link_failure": 0.1})
