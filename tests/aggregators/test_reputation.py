"""Reputation-weighted combining: the weights it gives, a run where it holds against noise that a fixed f does
not, resume with its state, and what it refuses."""

import math

import pytest
import torch

from peerlearn.aggregators.reputation import trust_weights
from peerlearn.build import build
from peerlearn.config import ConfigError
from peerlearn.engines import simulate
from tests.conftest import checkpoint_keeper, same_rows, tiny_config

NAN = math.nan


def test_filter_drops_the_f_lowest_scored_and_weight_scales_by_trust():
    W = torch.full((1, 5), 0.2)
    trust = torch.tensor([[NAN, 0.4, -0.3, NAN, 0.1]])  # column 0: the own model; column 3 not scored yet
    valid = torch.ones(1, 5, dtype=torch.bool)
    assert torch.equal(trust_weights(W, trust, valid, "filter", 1), torch.tensor([[0.2, 0.2, 0.0, 0.2, 0.2]]))
    assert torch.equal(trust_weights(W, trust, valid, "filter", 2), torch.tensor([[0.2, 0.2, 0.0, 0.2, 0.0]]))
    weighted = trust_weights(W, trust, valid, "weight", 0)
    assert torch.allclose(weighted, torch.tensor([[0.2, 0.2, 0.0, 0.2, 0.05]]))  # 0.1 / 0.4 of its weight
    alone = trust_weights(W, torch.tensor([[NAN, -1.0, -2.0, NAN, -0.1]]), valid, "weight", 0)
    assert torch.equal(alone, torch.tensor([[0.2, 0.0, 0.0, 0.2, 0.0]]))  # nobody trusted: own and unscored


def _noise(aggregator: dict, rounds: int = 40) -> dict:
    return simulate(build(tiny_config(num_rounds=rounds, eval_every=rounds, topology={"graph": "random_regular",
                                                                                       "degree": 4},
                                      threat={"attack": "gaussian", "num_byzantine": 3, "sigma": 3.0},
                                      algorithm=aggregator)))[-1]


def test_trust_weights_hold_against_noise_where_gossip_and_a_fixed_f_do_not():
    gossip = _noise({"aggregator": "gossip"})
    fixed = _noise({"aggregator": "loss_delta", "f": 1})  # a node with two noisy neighbours keeps one
    weighted = _noise({"aggregator": "reputation", "mode": "weight"})
    assert weighted["acc_min"] > fixed["acc_min"] + 0.2 and weighted["acc_mean"] > gossip["acc_mean"] + 0.2, \
        (gossip["acc_mean"], fixed["acc_min"], weighted["acc_mean"], weighted["acc_min"])


def test_a_resumed_run_continues_the_reputation_it_had(tmp_path):
    cfg = tiny_config(num_rounds=20, eval_every=5, topology={"graph": "random_regular", "degree": 4},
                      threat={"attack": "gaussian", "num_byzantine": 2, "sigma": 3.0},
                      algorithm={"aggregator": "reputation", "score": "meritrank", "mode": "weight"})
    keep, snapshots = checkpoint_keeper(tmp_path)

    full = simulate(build(cfg), on_checkpoint=keep)
    resumed = simulate(build(cfg), resume=snapshots[10])
    assert same_rows(resumed) == same_rows(full)


@pytest.mark.parametrize("algorithm, field", [
    ({"aggregator": "reputation", "score": "dice"}, "algorithm.score"),
    ({"aggregator": "reputation", "gossip_steps": 2}, "algorithm.gossip_steps"),
])
def test_what_it_cannot_run_is_one_line_naming_the_field(algorithm, field):
    with pytest.raises(ConfigError, match=f"^config error: {field}:"):
        build(tiny_config(topology={"graph": "random_regular", "degree": 4}, algorithm=algorithm))


def test_the_engines_on_real_processes_refuse_it_before_any_work():
    from peerlearn.engines import distributed
    from peerlearn.engines.p2p import peer

    cfg = tiny_config(algorithm={"aggregator": "reputation"})
    for check in (distributed.check_config, peer.check_config):
        with pytest.raises(ConfigError, match="^config error: algorithm.aggregator: reputation keeps a view"):
            check(cfg, 2)
