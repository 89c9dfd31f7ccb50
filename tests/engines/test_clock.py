import numpy as np
import pytest

from peerlearn.build import build
from peerlearn.world.clock import Clock, node_slowdowns
from peerlearn.engines import simulate
from peerlearn.topology import graphs, mixing
from tests.conftest import tiny_config


def test_equal_speeds_on_a_ring_cost_compute_plus_transfer_per_round_and_nobody_waits():
    cfg = tiny_config(num_rounds=12, eval_every=12, algorithm={"num_local_steps": 3},
                      clock={"step_time_s": 0.1, "bandwidth_mbps": 8.0, "latency_ms": 20.0})
    b = build(cfg)
    rows = simulate(b)
    per_round_bytes = 2 * 4 * b.flat.num_params  # two neighbours, float32
    per_round = 3 * 0.1 + per_round_bytes / 1e6 + 0.02
    assert rows[-1]["sim_time_s"] == pytest.approx(12 * per_round)
    assert rows[-1]["sim_compute_s"] == pytest.approx(12 * 0.3)
    assert rows[-1]["sim_comm_s"] == pytest.approx(12 * (per_round - 0.3))
    assert rows[-1]["sim_wait_s"] == pytest.approx(0.0, abs=1e-9)


def test_one_straggler_delays_a_ring_hop_by_hop():
    """Max-plus: node at distance d >= 1 from a straggler ends round R at (R-d+1)(s c + m) + (d-1)(c + m)."""
    n, rounds, c, m, s = 16, 5, 1.0, 0.5, 4.0
    slow = np.ones(n)
    slow[0] = s
    clock = Clock(slow, step_time_s=c, bandwidth_Bps=1.0, latency_s=0.0)
    W = mixing.metropolis_hastings_weights(graphs.cycle_graph(n))
    for _ in range(rounds):
        clock.advance(np.ones(n), np.full(n, m), W, collective=False)
    for d in range(0, 8):
        expected = rounds * (s * c + m) if d == 0 else (
            (rounds - d + 1) * (s * c + m) + (d - 1) * (c + m) if d <= rounds else rounds * (c + m))
        assert clock.t_N[d] == pytest.approx(expected)
        assert clock.t_N[(n - d) % n] == pytest.approx(expected)  # both directions round the ring
    assert clock.metrics()["sim_time_s"] == pytest.approx(rounds * (s * c + m))
    assert clock.metrics()["sim_wait_s"] > 0


def test_collective_rounds_wait_for_the_slowest_node_that_is_up():
    n = 8
    slow = np.ones(n)
    slow[3], slow[5] = 10.0, 3.0
    clock = Clock(slow, step_time_s=1.0, bandwidth_Bps=1.0, latency_s=0.0)
    alive = np.ones(n, dtype=bool)
    alive[3] = False  # the worst straggler is down: the next slowest sets the pace
    clock.advance(np.ones(n), np.ones(n), None, collective=True, server_bytes=2.0, alive_N=alive)
    assert clock.t_N[alive] == pytest.approx(3.0 + 1.0 + 2.0)
    assert clock.t_N[3] == 0.0 and clock.compute_N[3] == 0.0


def test_stragglers_show_up_as_waiting_in_a_run():
    base = tiny_config(num_rounds=10, eval_every=10, topology={"graph": "torus"})
    fast = simulate(build(base))[-1]
    slow = simulate(build(base.model_copy(update={"clock": base.clock.model_copy(
        update={"straggler_fraction": 0.25, "straggler_slowdown": 8.0})})))[-1]
    assert fast["sim_wait_s"] == pytest.approx(0.0, abs=1e-9) and slow["sim_wait_s"] > 1.0
    assert slow["sim_time_s"] > fast["sim_time_s"]
    assert slow["acc_mean"] == fast["acc_mean"]  # the clock measures; it does not change the learning


def test_node_slowdowns_are_seeded_with_median_one():
    a = node_slowdowns(10001, sigma=0.5, seed=3)
    assert np.median(a) == pytest.approx(1.0, rel=0.05)
    assert np.array_equal(a, node_slowdowns(10001, sigma=0.5, seed=3))
    b = node_slowdowns(100, straggler_fraction=0.1, straggler_slowdown=7.0, seed=0)
    assert sorted(set(b.tolist())) == [1.0, 7.0] and (b == 7.0).sum() == 10


def test_row_max_handles_rows_without_entries():
    import scipy.sparse as sp

    from peerlearn.world.clock import _row_max

    W = sp.csr_array(np.array([[0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]], dtype=float))
    ready = np.array([1.0, 5.0, 2.0, 7.0])
    assert _row_max(W, ready, ready).tolist() == [5.0, 5.0, 7.0, 7.0]


def test_per_node_slowdowns_from_the_config():
    from peerlearn.config import ConfigError

    def per_round(slowdowns):
        cfg = tiny_config(num_rounds=4, eval_every=4, topology={"graph": "complete"},
                          algorithm={"name": "local_sgd"}, clock={"slowdowns": slowdowns})
        return simulate(build(cfg))[-1]["sim_time_s"] / 4

    # every all-reduce waits for node 15, whose step (0.05 s) takes 5x as long: 0.2 s more per round
    assert per_round([1.0] * 15 + [5.0]) - per_round([1.0] * 16) == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="clock.slowdowns"):
        tiny_config(clock={"slowdowns": [1.0, 2.0]})
