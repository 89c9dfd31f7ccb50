"""The asynchronous engine: equal speeds reduce it to the synchronous algorithms; stragglers do not stall it."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from peerlearn import optim
from peerlearn.algorithms import gossip_learning
from peerlearn.config import ConfigError
from peerlearn.build import build
from peerlearn.engines.async_net import AsyncNet
from peerlearn.engines import simulate
from peerlearn.topology import directed, graphs, mixing
from tests.conftest import tiny_config


def _run(cfg):
    final = {}
    rows = simulate(build(cfg), on_finish=lambda p: final.setdefault("params", p))
    return rows, final["params"]


def _same_learning(rows_a, params_a, rows_b, params_b):
    assert [r["round"] for r in rows_a] == [r["round"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        assert a["acc_mean"] == pytest.approx(b["acc_mean"], abs=1e-9)
        assert a["loss_mean"] == pytest.approx(b["loss_mean"], rel=1e-5, nan_ok=True)
    torch.testing.assert_close(params_a, params_b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("outer", [{"outer_lr": 0.7, "outer_momentum": 0.9, "optimizer": "adamw", "lr": 0.005},
                                   {"outer_lr": 1.0, "outer_momentum": 0.0}], ids=["diloco", "local_sgd"])
def test_async_local_sgd_at_equal_speeds_equals_synchronous_diloco(outer):
    """Clock-driven with every worker at the same speed, all pushes of a round land in one slice with
    staleness 0, and delayed Nesterov applies exactly one outer Nesterov step: synchronous DiLoCo."""
    algorithm = {"num_local_steps": 3, **outer}
    asyn = tiny_config(algorithm={"name": "async_local_sgd", **algorithm}, num_rounds=20)
    sync = tiny_config(algorithm={"name": "diloco", **algorithm}, num_rounds=20)
    rows_a, params_a = _run(asyn)
    rows_s, params_s = _run(sync)
    _same_learning(rows_a, params_a, rows_s, params_s)
    assert all(r["staleness_mean"] == 0.0 for r in rows_a[1:])
    assert rows_a[-1]["acc_mean"] > rows_a[0]["acc_mean"] + 0.3


@pytest.mark.parametrize("topology", [{"graph": "torus"},
                                      {"graph": "directed_exponential", "mixing": "column_stochastic"}])
def test_async_push_sum_at_equal_speeds_equals_push_sum(topology):
    """(A fast network, so that sending to 4 neighbours does not make a wake longer than a round.)"""
    fast = {"bandwidth_mbps": 1e6, "latency_ms": 0.0}
    rows_a, params_a = _run(tiny_config(algorithm={"name": "async_push_sum", "num_local_steps": 2},
                                        topology=topology, clock=fast))
    rows_s, params_s = _run(tiny_config(algorithm={"name": "push_sum", "num_local_steps": 2}, topology=topology,
                                        clock=fast))
    _same_learning(rows_a, params_a, rows_s, params_s)
    assert rows_a[-1]["bytes_sent_total"] == rows_s[-1]["bytes_sent_total"]


def test_push_from_any_subset_of_senders_conserves_mass_and_all_senders_is_W_times_y():
    W = directed.column_stochastic_weights(directed.directed_exponential_graph(16))
    net = AsyncNet(W, seed=0)
    y = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(1)
    z = y
    for _ in range(20):
        senders = rng.choice(16, size=rng.integers(1, 16), replace=False)
        z = net.push(z, senders)
        torch.testing.assert_close(z.sum(0), y.sum(0))
    torch.testing.assert_close(net.push(y, np.arange(16)), torch.from_numpy(W.toarray()) @ y)


def test_random_peers_are_uniform_out_neighbours_and_minus_one_without_any():
    adj = graphs.star_graph(5)
    W = sp.lil_array(mixing.metropolis_hastings_weights(adj))
    W[1, 0] = W[0, 1] = 0.0  # cut the hub from leaf 1: leaf 1 has no peer left
    net = AsyncNet(sp.csr_array(W), seed=0)
    peers = net.random_peers(np.zeros(4000, dtype=np.int64))
    assert set(peers.tolist()) == {2, 3, 4}
    assert np.bincount(peers, minlength=5)[2:].min() > 4000 / 3 * 0.9
    assert (net.random_peers(np.array([1, 2])) == [-1, 0]).all()


def test_gossip_learning_merges_by_age_and_the_receiver_trains():
    """Receiver 1 (age 30) gets node 0's model (age 10): merged 3/4 own + 1/4 received, then trained
    (lr 0 here, so the merge is what stays); its age becomes max(10, 30) + steps * batch."""
    algo = gossip_learning(optim.sgd(0.0), num_local_steps=2, batch_size=5)
    x = torch.tensor([[4.0, 0.0], [0.0, 8.0]])
    state = algo.init(x)._replace(age_N=torch.tensor([10.0, 30.0], dtype=torch.float64))
    net = AsyncNet(sp.csr_array(np.array([[0.5, 0.5], [0.5, 0.5]])), seed=0)
    net.slice_end = 1.0

    class Batches:
        drawn = 0

        def next(self, rows=None):
            self.drawn += 1
            return torch.zeros(len(rows), 5, 2), torch.zeros(len(rows), 5, dtype=torch.long)

    def grad_fn(params, batch):
        return torch.zeros(params.shape[0]), torch.zeros_like(params)

    batches = Batches()
    out, state, _ = algo.wake(state, x, np.array([0]), batches, grad_fn, net)
    torch.testing.assert_close(out, torch.tensor([[4.0, 0.0], [1.0, 6.0]]))
    assert state.age_N.tolist() == [10.0, 40.0] and batches.drawn == 2
    assert net.bytes_sent_N.tolist() == [3 * 4, 0.0]  # two parameters and the age, float32
    net.busy_until_N[:] = 2.0  # node 1 is still training: the send waits for the next slice
    out2, _, _ = algo.wake(state, out, np.array([0]), batches, grad_fn, net)
    assert torch.equal(out2, out) and net.take_deferred().tolist() == [0]


def test_with_stragglers_async_local_sgd_reaches_the_synchronous_accuracy_in_half_the_simulated_time():
    """Known result (Liu et al. 2024): asynchronous local SGD keeps the fast workers busy while the
    synchronous rounds wait for the stragglers (here a quarter of the nodes, 8x slower)."""
    clock = {"straggler_fraction": 0.25, "straggler_slowdown": 8.0}
    algorithm = {"num_local_steps": 2, "outer_lr": 1.0, "outer_momentum": 0.0}
    sync, _ = _run(tiny_config(algorithm={"name": "diloco", **algorithm}, clock=clock, num_rounds=30))
    asyn, _ = _run(tiny_config(algorithm={"name": "async_local_sgd", **algorithm}, clock=clock, num_rounds=60))
    assert asyn[-1]["sim_time_s"] * 2 < sync[-1]["sim_time_s"]
    assert asyn[-1]["acc_mean"] > sync[-1]["acc_mean"] > 0.5
    assert asyn[-1]["staleness_mean"] > 1.0  # the fast workers' pushes land between a straggler's pull and push
    assert sync[-1]["sim_wait_s"] > 5 * asyn[-1]["sim_wait_s"]


def test_gossip_learning_spreads_what_each_node_learns():
    """Non-IID data (Dirichlet 0.3): training alone, the average of the nodes' models is poor; gossip
    learning's merges carry every node's data into the models, and they draw together."""
    data = {"partition": "dirichlet", "alpha": 0.3}
    gossip, _ = _run(tiny_config(algorithm={"name": "gossip_learning", "num_local_steps": 2}, data=data,
                                 topology={"graph": "complete"}, num_rounds=30, eval_every=10))
    alone, _ = _run(tiny_config(algorithm={"name": "local", "num_local_steps": 2}, data=data, num_rounds=30,
                                eval_every=10))
    assert gossip[-1]["acc_avg_model"] > alone[-1]["acc_avg_model"] + 0.15
    assert gossip[-1]["consensus_distance"] < 0.5 * alone[-1]["consensus_distance"]


def test_crashed_nodes_neither_wake_nor_receive_and_the_rest_keep_learning():
    cfg = tiny_config(algorithm={"name": "gossip_learning", "num_local_steps": 2}, topology={"graph": "torus"},
                      faults={"crash_fraction": 0.5, "crash_round": 6}, num_rounds=30, eval_every=5)
    built = build(cfg)
    down = ~built.faults.alive(10)
    snapshots = {}
    rows = simulate(built, on_checkpoint=lambda s: snapshots.setdefault(s["round"], s["params_NP"].clone()))
    assert down.sum() == 8
    frozen = torch.from_numpy(down)
    assert torch.equal(snapshots[10][frozen], snapshots[30][frozen])  # down since round 6: untouched
    assert not torch.equal(snapshots[10][~frozen], snapshots[30][~frozen])
    assert rows[-1]["alive_nodes"] == 8 and rows[-1]["acc_alive_mean"] > rows[1]["acc_alive_mean"]


@pytest.mark.parametrize("algorithm, error", [
    ({"name": "gossip_learning", "final_merge": True}, "algorithm.final_merge"),
    ({"name": "async_push_sum", "server_period": 5}, "algorithm.server_period"),
])
def test_async_config_errors_name_the_field(algorithm, error):
    with pytest.raises(ConfigError, match=error):
        tiny_config(algorithm=algorithm)
    with pytest.raises(ConfigError, match="topology.mixing"):
        tiny_config(algorithm={"name": "gossip_learning"}, topology={"graph": "directed_ring",
                                                                       "mixing": "column_stochastic"})
