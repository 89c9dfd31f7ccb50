"""The loss-delta combine rule: it drops the worst-scored models and keeps the own one, and withstands noise.

That a label-flipping or noise-sending neighbour ranks last under the running score is tested with the
attribution scorer (tests/attribution/test_loss_delta_scores.py); a single round's score ranked the label flipper
last in 84% of these trials, a 20-round running sum in 95%."""

import torch

from peerlearn.aggregators.loss_delta import loss_delta_mean, loss_delta_scores
from peerlearn.build import build
from peerlearn.engines import simulate
from tests.conftest import tiny_config


def test_the_rule_drops_the_f_worst_and_keeps_the_own_model():
    torch.manual_seed(0)
    good = torch.zeros(1, 1, 2)
    # a one-parameter "model": loss = (p0 - 1)^2 + (p1 - 1)^2 on every sample; neighbours at 1 (good) or 5 (bad)
    x = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [5.0, 5.0], [1.0, 1.0]]])
    valid = torch.ones(1, 4, dtype=torch.bool)

    def probe(points_RMP, x_RB, y_RB):
        return ((points_RMP - 1.0) ** 2).sum(-1)

    batch = (torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))
    scores = loss_delta_scores(x, valid, probe, batch)
    assert int(scores[0, 1:].argmin()) + 1 == 2 and float(scores[0, 0]) == 0.0
    merged = loss_delta_mean(x, valid, probe, batch, f=1)
    assert torch.allclose(merged, torch.tensor([[2.0 / 3.0, 2.0 / 3.0]]))  # mean of own, 1 and 1
    assert torch.allclose(loss_delta_mean(x, valid, probe, batch, f=0), x.mean(1))
    del good


def test_loss_delta_as_the_dsgd_aggregator_withstands_noise_where_gossip_does_not():
    threat = {"attack": "gaussian", "num_byzantine": 2, "sigma": 3.0}
    rows = {agg: simulate(build(tiny_config(num_rounds=40, eval_every=40, topology={"graph": "random_regular",
                                                                                    "degree": 4},
                                            threat=threat, algorithm={"aggregator": agg})))[-1]["acc_mean"]
            for agg in ("gossip", "loss_delta")}
    assert rows["loss_delta"] > rows["gossip"] + 0.2, rows
