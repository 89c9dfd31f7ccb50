"""The runtime model of an iteration (gossip vs a ring all-reduce) against the simulated clock: the same per-round
times, and the crossover latency the model predicts is where the simulated runs cross (within 20%), with and
without gossip overlapping the computation (``clock.overlap``, combine-then-adapt D-SGD)."""

import math

import pytest

from peerlearn.build import build
from peerlearn.engines import simulate
from peerlearn.world.runtime import (crossover_latency, gossip_minus_all_reduce_s, gossip_s, iteration_s,
                                     ring_all_reduce_s)
from tests.conftest import tiny_config

N, DEGREE, STEP_S, MBPS, ROUNDS = 16, 8, 0.05, 10.0, 4


def _run(algorithm: dict, latency_ms: float, mbps: float = MBPS, **clock) -> tuple[dict, int]:
    cfg = tiny_config(num_nodes=N, num_rounds=ROUNDS, eval_every=ROUNDS, model={"name": "logreg"},
                      topology={"graph": "random_regular", "degree": DEGREE}, algorithm=algorithm,
                      clock={"step_time_s": STEP_S, "bandwidth_mbps": mbps, "latency_ms": latency_ms,
                             "collective_latency": "per_hop", **clock})
    built = build(cfg)
    return simulate(built)[-1], built.flat.num_params * 4


def _per_round_s(algorithm: dict, latency_ms: float, mbps: float = MBPS, **clock) -> tuple[float, int]:
    last, model_bytes = _run(algorithm, latency_ms, mbps, **clock)
    return last["sim_time_s"] / ROUNDS, model_bytes


def test_the_crossover_is_where_the_two_iteration_times_meet():
    args = dict(num_nodes=N, degree=DEGREE, model_bytes=2600.0, bandwidth_Bps=MBPS * 1e6 / 8, compute_s=STEP_S)
    alpha = crossover_latency(**args)
    assert gossip_minus_all_reduce_s(alpha, **args) == pytest.approx(0.0, abs=1e-12)
    # closed form without overlap: (d - 2(N-1)/N) M/B = (2(N-1) - 1) alpha
    expected = (DEGREE - 2 * (N - 1) / N) * 2600.0 / (MBPS * 1e6 / 8) / (2 * (N - 1) - 1)
    assert alpha == pytest.approx(expected, rel=1e-9)
    assert crossover_latency(**{**args, "degree": 1}) == 0.0  # one neighbour sends less than a ring all-reduce
    assert math.isinf(crossover_latency(**{**args, "num_nodes": 1}))  # nothing to all-reduce: gossip never wins
    # overlapping the gossip with the gradient hides it while it is shorter than the computation
    assert crossover_latency(**args, overlap=True) < alpha
    assert iteration_s(1.0, 0.4, overlap=True) == 1.0 and iteration_s(1.0, 0.4) == 1.4


@pytest.mark.parametrize("latency_ms", [0.0, 0.2, 2.0])
def test_the_simulated_clock_charges_what_the_model_predicts(latency_ms):
    gossip, model_bytes = _per_round_s({"name": "dsgd"}, latency_ms)
    reduce, _ = _per_round_s({"name": "centralized"}, latency_ms)
    bandwidth, latency = MBPS * 1e6 / 8, latency_ms / 1e3
    assert gossip == pytest.approx(iteration_s(STEP_S, gossip_s(DEGREE, model_bytes, bandwidth, latency)), rel=1e-9)
    assert reduce == pytest.approx(iteration_s(STEP_S, ring_all_reduce_s(N, model_bytes, bandwidth, latency)),
                                   rel=1e-9)


def test_the_predicted_crossover_is_where_the_simulated_runs_cross():
    """Per-round times are linear in the latency: two simulated latencies give each line, their intersection is
    the simulated crossover."""
    lo, hi = 0.0, 2.0  # ms
    g0, model_bytes = _per_round_s({"name": "dsgd"}, lo)
    g1, _ = _per_round_s({"name": "dsgd"}, hi)
    r0, _ = _per_round_s({"name": "centralized"}, lo)
    r1, _ = _per_round_s({"name": "centralized"}, hi)
    simulated_ms = lo + (g0 - r0) / ((r1 - r0) - (g1 - g0)) * (hi - lo)
    predicted_ms = 1e3 * crossover_latency(N, DEGREE, model_bytes, MBPS * 1e6 / 8, STEP_S)
    assert simulated_ms == pytest.approx(predicted_ms, rel=0.2), (simulated_ms, predicted_ms)
    assert 0.1 < predicted_ms < 1.0  # a few hundred microseconds: gossip on 8 neighbours wins on a WAN, not a LAN
    # below it the all-reduce is faster, above it gossip
    below, above = predicted_ms / 2, predicted_ms * 2
    assert _per_round_s({"name": "centralized"}, below)[0] < _per_round_s({"name": "dsgd"}, below)[0]
    assert _per_round_s({"name": "dsgd"}, above)[0] < _per_round_s({"name": "centralized"}, above)[0]


CTA = {"name": "dsgd", "order": "cta"}


@pytest.mark.parametrize("mbps", [10.0, 1.0], ids=["gossip-shorter-than-compute", "gossip-longer"])
def test_with_overlap_a_gossip_round_takes_the_longer_of_compute_and_gossip(mbps):
    (last, model_bytes), latency = _run(CTA, 0.2, mbps, overlap=True), 0.2e-3
    comm = gossip_s(DEGREE, model_bytes, mbps * 1e6 / 8, latency)
    assert last["sim_time_s"] / ROUNDS == pytest.approx(iteration_s(STEP_S, comm, overlap=True), rel=1e-9)
    assert (comm < STEP_S) == (mbps == 10.0)  # both cases are exercised
    # the hidden seconds count as compute and as communication, not as waiting (equal nodes never wait)
    assert last["sim_compute_s"] == pytest.approx(ROUNDS * STEP_S) and last["sim_comm_s"] == pytest.approx(ROUNDS * comm)
    assert last["sim_wait_s"] == pytest.approx(0.0, abs=1e-12)
    sequential, _ = _run(CTA, 0.2, mbps)
    assert sequential["sim_time_s"] / ROUNDS == pytest.approx(STEP_S + comm, rel=1e-9)


def test_with_overlap_the_predicted_crossover_is_where_the_simulated_runs_cross():
    """At 1 Mbit/s gossip to 8 neighbours outlasts the step, so overlap hides the step: gossip's line drops by it and
    crosses the all-reduce's at a lower latency, the one the model predicts."""
    lo, hi, mbps = 0.0, 10.0, 1.0
    g0, model_bytes = _per_round_s(CTA, lo, mbps, overlap=True)
    g1, _ = _per_round_s(CTA, hi, mbps, overlap=True)
    r0, _ = _per_round_s({"name": "centralized"}, lo, mbps)
    r1, _ = _per_round_s({"name": "centralized"}, hi, mbps)
    simulated_ms = lo + (g0 - r0) / ((r1 - r0) - (g1 - g0)) * (hi - lo)
    args = (N, DEGREE, model_bytes, mbps * 1e6 / 8, STEP_S)
    predicted_ms = 1e3 * crossover_latency(*args, overlap=True)
    assert simulated_ms == pytest.approx(predicted_ms, rel=0.2), (simulated_ms, predicted_ms)
    assert predicted_ms < 1e3 * crossover_latency(*args)  # overlapping makes gossip win sooner


def test_overlap_is_refused_for_an_algorithm_that_sends_what_it_has_just_computed():
    from peerlearn.config import ConfigError

    with pytest.raises(ConfigError, match="clock.overlap: .* got dsgd with algorithm.order: atc"):
        tiny_config(algorithm={"name": "dsgd"}, clock={"overlap": True})  # adapt-then-combine
    with pytest.raises(ConfigError, match="clock.overlap"):
        tiny_config(algorithm={"name": "centralized"}, clock={"overlap": True})


def test_a_clock_saved_before_overlap_existed_resumes_with_nothing_hidden():
    import numpy as np

    from peerlearn.world.clock import Clock

    clock = Clock(np.ones(3), overlap=True)
    clock.advance(np.ones(3), np.full(3, 1e5), None, collective=False)
    old = {k: v for k, v in clock.state_dict().items() if k != "hidden_N"}
    again = Clock(np.ones(3))
    again.load_state_dict(old)
    assert np.array_equal(again.hidden_N, np.zeros(3)) and np.array_equal(again.t_N, clock.t_N)
    again.load_state_dict(clock.state_dict())
    assert np.array_equal(again.hidden_N, clock.hidden_N) and clock.hidden_N[0] > 0
