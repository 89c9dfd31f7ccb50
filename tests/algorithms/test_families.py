"""The algorithm families of issue 3: each checked against a property its paper proves or defines."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from peerlearn import aggregators, algorithms, optim
from peerlearn.config import ConfigError, parse_config
from peerlearn.build import build
from peerlearn.algorithms.fedavg import sample_clients
from peerlearn.algorithms.local import local_steps
from peerlearn.engines.comm import SimComm
from peerlearn.engines import simulate
from peerlearn.topology import complete_graph, cycle_graph, metropolis_hastings_weights, uniform_weights
from peerlearn.topology.directed import column_stochastic_weights, directed_cycle_graph
from tests.algorithms.test_equivalences import _run
from tests.conftest import tiny_config


class _NoBatches:
    def next(self, rows=None):
        return None


def _quadratic(n, p=3, seed=0):
    """f_i(x) = a_i/2 ||x - b_i||^2 with unequal curvatures: the optimum sum a_i b_i / sum a_i is not
    the mean of the local optima, so D-SGD with a constant step is biased."""
    g = torch.Generator().manual_seed(seed)
    a = (0.5 + 2.0 * torch.rand(n, 1, generator=g, dtype=torch.float64))
    b = 5.0 * torch.randn(n, p, generator=g, dtype=torch.float64)

    def grad_fn(x, batch):
        diff = x - b
        return 0.5 * (a * diff.square()).sum(1), a * diff

    return grad_fn, (a * b).sum(0) / a.sum()


def _iterate(algorithm, x0, grad_fn, comm, rounds):
    x, state = x0.clone(), algorithm.init(x0)
    for _ in range(rounds):
        x, state, _ = algorithm.step(state, x, _NoBatches(), grad_fn, comm)
    return x


def test_gradient_tracking_reaches_the_exact_optimum_where_dsgd_stalls():
    n = 12
    grad_fn, optimum = _quadratic(n)
    W = metropolis_hastings_weights(cycle_graph(n))
    x0 = torch.zeros(n, 3, dtype=torch.float64)
    lr = 0.05
    tracked = _iterate(algorithms.gradient_tracking(lr), x0, grad_fn, SimComm(W), 3000)
    plain = _iterate(algorithms.dsgd(optim.sgd(lr)), x0, grad_fn, SimComm(W), 3000)
    assert float((tracked - optimum).norm(dim=1).max()) < 1e-6
    assert float((plain - optimum).norm(dim=1).max()) > 1e-2  # a heterogeneity-dependent error floor


def test_gradient_tracking_sends_twice_the_bytes_of_dsgd():
    n = 8
    grad_fn, _ = _quadratic(n)
    W = metropolis_hastings_weights(cycle_graph(n))
    x0 = torch.zeros(n, 3, dtype=torch.float64)
    gt, plain = SimComm(W), SimComm(W)
    _iterate(algorithms.gradient_tracking(0.1), x0, grad_fn, gt, 5)
    _iterate(algorithms.dsgd(optim.sgd(0.1)), x0, grad_fn, plain, 5)
    assert gt.bytes_sent_total == 2 * plain.bytes_sent_total


def test_push_sum_on_a_directed_ring_converges_to_the_true_average():
    """No training: push-sum alone. Column-stochastic P is not doubly stochastic on this graph, so the
    plain iteration x <- P x drifts away from the average; the de-biased x / w does not."""
    n = 10
    adj = directed_cycle_graph(n)
    adj = adj.tolil()
    adj[0, 5] = 1.0  # node 5 also sends to node 0: out-degrees differ, P is not row-stochastic
    P = column_stochastic_weights(adj.tocsr())
    assert np.allclose(P.sum(axis=0), 1.0) and not np.allclose(P.sum(axis=1), 1.0)
    x0 = torch.randn(n, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zero_grad = lambda x, batch: (torch.zeros(len(x), dtype=x.dtype), torch.zeros_like(x))  # noqa: E731
    comm = SimComm(P)
    z = _iterate(algorithms.push_sum(optim.sgd(0.1)), x0, zero_grad, comm, 300)
    assert float((z - x0.mean(0)).abs().max()) < 1e-6
    naive = x0.clone()
    for _ in range(300):
        naive = comm.push(naive)
    assert float((naive - x0.mean(0)).abs().max()) > 1e-2
    assert comm.bytes_sent_N[5] == 2 * comm.bytes_sent_N[4]  # node 5 has two out-neighbours


def test_push_sum_on_a_doubly_stochastic_graph_equals_dsgd():
    W = metropolis_hastings_weights(cycle_graph(16))
    opt = optim.sgd(0.1)
    sgp, _ = _run(algorithms.push_sum(opt), W)
    dsgd, _ = _run(algorithms.dsgd(opt), W)
    assert torch.allclose(sgp, dsgd, atol=1e-5)


def test_diloco_with_one_inner_step_outer_lr_one_and_no_momentum_is_synchronous_sgd():
    W = uniform_weights(complete_graph(16))
    inner = optim.sgd(0.1)
    diloco, _ = _run(algorithms.diloco(inner, 1, outer_lr=1.0, outer_momentum=0.0), W)
    sync, _ = _run(algorithms.centralized(inner, 1, weights_N=None), W)
    assert torch.allclose(diloco, sync, atol=1e-5)


def test_local_sgd_equals_fedavg_with_full_participation_and_uniform_weights():
    W = uniform_weights(complete_graph(16))
    opt = optim.sgd(0.1)
    local, comm_local = _run(algorithms.local_sgd(opt, 3), W)
    fed, _ = _run(algorithms.fedavg(opt, 3, fraction=1.0, data_sizes_N=None), W)
    assert torch.allclose(local, fed, atol=1e-5)
    assert comm_local.bytes_sent_total > 0


def test_diloco_outer_nesterov_step_follows_its_formula():
    """One round from a common start: theta - lr_out * (Delta + mu * Delta) with Delta the mean pseudo-gradient."""
    W = uniform_weights(complete_graph(16))
    b = build(tiny_config())
    inner = optim.sgd(0.1)
    theta = b.params_NP.clone()
    out, _, _ = algorithms.diloco(inner, 2, outer_lr=0.7, outer_momentum=0.9).step(
        algorithms.diloco(inner, 2).init(theta), theta, b.batches, b.grad_fn, SimComm(W))
    b2 = build(tiny_config())  # the same batches again
    trained, _, _ = local_steps(theta, inner.init(theta), inner, b2.batches, b2.grad_fn, 2)
    delta = theta - trained.mean(0)
    assert torch.allclose(out, theta - 0.7 * (delta + 0.9 * delta), atol=1e-5)


def test_fedprox_with_mu_zero_is_fedavg_and_its_term_pulls_to_the_anchor():
    W = uniform_weights(complete_graph(16))
    fed, _ = _run(algorithms.fedavg(optim.sgd(0.1), 3), W)
    prox0, _ = _run(algorithms.fedavg(optim.proximal(optim.sgd(0.1), 0.0), 3), W)
    assert torch.equal(fed, prox0)
    opt = optim.proximal(optim.sgd(0.5), mu=1.0)
    anchor = torch.zeros(2, 3)
    state = opt.init(anchor)
    step, _ = opt.update(torch.zeros(2, 3), state, torch.ones(2, 3))  # zero loss gradient, away from anchor
    assert torch.allclose(step, torch.full((2, 3), -0.5))


def test_adamw_first_step_is_lr_times_sign():
    opt = optim.adamw(0.01)
    g = torch.tensor([[3.0, -0.2, 1e-3]])
    step, state = opt.update(g, opt.init(torch.zeros(1, 3)), torch.zeros(1, 3))
    assert torch.allclose(step, -0.01 * g.sign(), atol=1e-6)
    assert int(state.count_N.item()) == 1


def test_multiple_gossip_steps_apply_W_to_the_power_Q():
    n = 8
    W = metropolis_hastings_weights(cycle_graph(n))
    x0 = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zero_grad = lambda x, batch: (torch.zeros(len(x), dtype=x.dtype), torch.zeros_like(x))  # noqa: E731
    out = _iterate(algorithms.dsgd(optim.sgd(0.1), gossip_steps=3), x0, zero_grad, SimComm(W), 1)
    Wd = torch.from_numpy(W.toarray())
    assert torch.allclose(out, torch.linalg.matrix_power(Wd, 3) @ x0, atol=1e-6)


def test_sam_step_takes_the_gradient_at_the_perturbed_point():
    n = 4
    grad_fn, _ = _quadratic(n)
    x0 = torch.zeros(n, 3, dtype=torch.float64)
    identity = sp.identity(n, format="csr")
    out = _iterate(algorithms.dsgd(optim.sgd(0.1), sam_rho=0.5), x0, grad_fn, SimComm(identity), 1)
    _, g = grad_fn(x0, None)
    _, g_adv = grad_fn(x0 + 0.5 * g / g.norm(dim=1, keepdim=True), None)
    assert torch.allclose(out, x0 - 0.1 * g_adv)


def test_communication_schedule_spends_gossip_late():
    comm = algorithms.communication_schedule(100, every=10, late_fraction=0.2)
    on = [r for r in range(1, 101) if comm(r)]
    assert on == [10, 20, 30, 40, 50, 60, 70, 80] + list(range(81, 101))


def test_skipped_rounds_send_nothing():
    n = 8
    W = metropolis_hastings_weights(cycle_graph(n))
    grad_fn, _ = _quadratic(n)
    x0 = torch.zeros(n, 3, dtype=torch.float64)
    every, always = SimComm(W), SimComm(W)
    _iterate(algorithms.dsgd(optim.sgd(0.1), communicate=lambda r: r % 4 == 0), x0, grad_fn, every, 8)
    _iterate(algorithms.dsgd(optim.sgd(0.1)), x0, grad_fn, always, 8)
    assert every.bytes_sent_total * 4 == always.bytes_sent_total


def test_semi_decentralized_s2a_makes_everyone_equal_and_s2s_only_the_sampled():
    W = metropolis_hastings_weights(cycle_graph(16))
    opt = optim.sgd(0.1)
    s2a, comm = _run(algorithms.with_server_rounds(algorithms.dsgd(opt), 5, 0.25, "all"), W)
    assert float((s2a - s2a[0]).abs().max()) == 0.0  # round 10 ended with a broadcast to all
    s2s, _ = _run(algorithms.with_server_rounds(algorithms.dsgd(opt), 5, 0.25, "sampled", seed=3), W)
    rows = sample_clients(16, 0.25, 3, 10)
    assert float((s2s[rows] - s2s[rows[0]]).abs().max()) == 0.0
    assert float((s2s - s2s[rows[0]]).abs().max()) > 0.0
    assert comm.bytes_sent_server > 0


def test_variance_corrected_averaging_keeps_per_layer_variance():
    """Averaging K independently initialised models divides each layer's variance by about K;
    the corrected average keeps it (the vanishing-variance paper's point)."""
    k = 8
    b = build(tiny_config(num_nodes=k, model={"same_init": False, "hidden": [64]}))
    x = b.params_NP.double()
    slices = b.flat.layer_slices()
    comm = SimComm(uniform_weights(complete_graph(k)))
    before = aggregators.layer_variances(x, slices)
    plain = aggregators.layer_variances(comm.mix(x), slices)
    corrected = aggregators.layer_variances(
        aggregators.variance_corrected(lambda c, v: c.mix(v), slices)(comm, x), slices)
    big = torch.tensor([s.stop - s.start >= 64 for s in slices])  # a 10-element bias is too noisy a sample
    ratio_plain = (before.mean(0) / plain.mean(0))[big]
    assert bool(((ratio_plain > 0.7 * k) & (ratio_plain < 1.3 * k)).all()), ratio_plain
    assert torch.allclose(corrected, before.mean(0).expand_as(corrected), rtol=0.02)
    # the mean of every layer is the plain average's
    mixed = comm.mix(x)
    corrected_x = aggregators.variance_corrected(lambda c, v: c.mix(v), slices)(comm, x)
    for s in slices:
        assert torch.allclose(corrected_x[:, s].mean(1), mixed[:, s].mean(1), atol=1e-9)


def test_final_merge_leaves_one_model_and_counts_an_all_reduce():
    cfg = tiny_config(num_rounds=6, eval_every=3, algorithm={"final_merge": True, "comm_every": 3})
    final = []
    rows = simulate(build(cfg), on_finish=final.append)
    assert float((final[0] - final[0][0]).abs().max()) < 1e-6
    assert rows[-1]["consensus_distance"] < 1e-10
    assert rows[-1]["acc_mean"] == pytest.approx(rows[-1]["acc_avg_model"])
    assert rows[-1]["bytes_sent_total"] > rows[-2]["bytes_sent_total"]


@pytest.mark.parametrize("section, message", [
    ({"topology": {"graph": "directed_ring"}}, "topology.mixing: the directed graph directed_ring needs "
                                               "column_stochastic"),
    ({"topology": {"graph": "directed_ring", "mixing": "column_stochastic"}},
     "topology.mixing: column_stochastic weights do not preserve the average under dsgd"),
    ({"topology": {"schedule": "resample", "graph": "ring"}}, "topology.graph: schedule resample draws"),
    ({"topology": {"schedule": "sequence"}}, "topology.sequence: schedule sequence needs"),
    ({"topology": {"schedule": "random_matching"}, "algorithm": {"aggregator": "median"}},
     "algorithm.aggregator: median needs a static topology"),
    ({"algorithm": {"name": "gradient_tracking", "num_local_steps": 2}},
     "algorithm.num_local_steps: not a key of algorithm gradient_tracking"),
    ({"algorithm": {"name": "fedavg", "server_period": 5}}, "algorithm.server_period: not a key of algorithm fedavg"),
    ({"algorithm": {"name": "diloco"}, "model": {"same_init": False}}, "model.same_init: algorithm diloco"),
    ({"algorithm": {"optimizer": "adam"}}, "algorithm.optimizer: unknown optimizer 'adam'; registered: sgd, adamw"),
    ({"algorithm": {"name": "diloco", "combine": "carrier_pigeon"}},
     "algorithm.combine: Input should be 'all_reduce' or 'gossip'"),
    ({"algorithm": {"combine": "gossip"}}, "algorithm.combine: not a key of algorithm dsgd; it takes: name, lr"),
    ({"algorithm": {"optimizer": "adamw", "momentum": 0.9}}, "algorithm.momentum: not a key of algorithm dsgd"),
])
def test_invalid_algorithm_options_are_one_line_config_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"num_nodes": 8, **section})


def test_modest_with_everyone_sampled_is_fedavg_with_uniform_weights():
    W = uniform_weights(complete_graph(16))
    opt = optim.sgd(0.1)
    mod, _ = _run(algorithms.modest(opt, 3, sample_size=16, num_aggregators=1), W)
    fed, _ = _run(algorithms.fedavg(opt, 3, fraction=1.0, data_sizes_N=None), W)
    assert torch.allclose(mod, fed, atol=1e-5)


def test_modest_traffic_is_about_2as_messages_per_round_whatever_n():
    from peerlearn.algorithms.modest import modest_sample

    for n in (32, 64):
        b = build(tiny_config(num_nodes=n))
        comm = SimComm(uniform_weights(complete_graph(n)))
        algo = algorithms.modest(optim.sgd(0.1), 1, sample_size=6, num_aggregators=2, seed=5)
        params, state = b.params_NP.clone(), algo.init(b.params_NP)
        params, state, _ = algo.step(state, params, b.batches, b.grad_fn, comm)
        rows, nxt = modest_sample(n, 6, 5, 1), modest_sample(n, 6, 5, 2)
        overlap = int(torch.isin(rows, nxt[:2]).sum())
        messages = (6 * 2 - overlap) + 2 * (6 - 1)
        assert comm.bytes_sent_total == messages * 4 * b.flat.num_params
        untouched = torch.ones(n, dtype=torch.bool)
        untouched[nxt] = False
        assert torch.equal(params[untouched], b.params_NP[untouched])  # only S_{k+1} received the aggregate
        assert float((params[nxt] - params[nxt[0]]).abs().max()) == 0.0
