"""Isolated experts and a router: the ensemble's arithmetic, a run where the routed experts beat any single expert
while no expert weight crosses clusters, and the partition it needs."""

import pytest
import torch

from peerlearn.algorithms.experts import group_mean, routed_accuracy
from peerlearn.build import build
from peerlearn.config import ConfigError
from peerlearn.engines import simulate
from tests.conftest import checkpoint_keeper, tiny_config


def test_the_routed_ensemble_follows_its_router():
    x = torch.eye(4)  # four inputs, one per class; classes {0, 1} are cluster 0, {2, 3} cluster 1
    y = torch.arange(4)
    cluster = torch.tensor([0, 0, 1, 1])
    experts = torch.tensor([[1.0], [2.0]])  # a "model" is an id: its logits are looked up below
    good = {1.0: torch.tensor([[9.0, 0, 0, 0], [0, 9.0, 0, 0], [9.0, 0, 0, 0], [0, 9.0, 0, 0]]),  # right on 0, 1
            2.0: torch.tensor([[0, 0, 9.0, 0], [0, 0, 0, 9.0], [0, 0, 9.0, 0], [0, 0, 0, 9.0]]),  # right on 2, 3
            3.0: torch.tensor([[9.0, 0, 0, 0], [9.0, 0, 0, 0], [0, 9.0, 0, 0], [0, 9.0, 0, 0]]),  # a perfect router
            4.0: torch.zeros(4, 4)}  # a router that cannot tell

    def logits(params, inputs):
        return torch.stack([good[float(p[0])] for p in params])

    perfect = routed_accuracy(logits, experts, torch.tensor([3.0]), x, y, cluster)
    assert perfect == {"ensemble_top1_acc": 1.0, "ensemble_top2_acc": 1.0, "ensemble_full_acc": 1.0, "router_acc": 1.0}
    blind = routed_accuracy(logits, experts, torch.tensor([4.0]), x, y, cluster)
    # an equal mixture of two equally sure experts: every input ties between them, resolved to the lower class
    assert blind["router_acc"] == 0.5 and blind["ensemble_full_acc"] == 0.5
    assert group_mean(torch.tensor([[1.0], [2.0], [3.0], [5.0]]), torch.tensor([0, 1, 0, 1]), 2).flatten().tolist() == \
        [2.0, 3.5, 2.0, 3.5]


def test_routed_experts_beat_any_single_expert_and_no_expert_weight_crosses_clusters(tmp_path):
    cfg = tiny_config(num_nodes=32, num_rounds=100, eval_every=100, topology={"graph": "complete"},
                      data={"partition": "clusters", "num_clusters": 4},
                      algorithm={"name": "experts", "num_experts": 4, "lr": 0.1})
    keep, snapshots = checkpoint_keeper(tmp_path)
    row = simulate(build(cfg), on_checkpoint=keep)[-1]
    # measured: a single expert 0.244 on the whole test set, its own task 0.985 (local split 0.2); routed ensemble
    # 0.728 (top-1) / 0.783 (top-2) / 0.786 (full), router 0.736 at naming a test sample's cluster
    assert row["ensemble_full_acc"] > row["acc_mean"] + 0.4 and row["router_acc"] > 0.25 + 0.3
    assert row["ensemble_top2_acc"] >= row["ensemble_top1_acc"] - 0.01
    experts = snapshots[100]["params_NP"]
    group = torch.arange(32) % 4
    assert all(torch.equal(experts[i], experts[int(group[i])]) for i in range(32))  # one expert per cluster
    assert not torch.equal(experts[0], experts[1])


def test_it_needs_the_clusters_partition_with_one_cluster_per_expert():
    with pytest.raises(ConfigError, match="^config error: algorithm.num_experts: one expert per data cluster"):
        tiny_config(algorithm={"name": "experts", "num_experts": 3}, data={"partition": "clusters", "num_clusters": 2})
    with pytest.raises(ConfigError, match="^config error: algorithm.num_experts"):
        tiny_config(algorithm={"name": "experts", "num_experts": 2})
