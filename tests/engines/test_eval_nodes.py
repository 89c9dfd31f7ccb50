"""``eval_nodes`` (issue 16): evaluating a seeded subset of the nodes at huge N changes only the acc_* columns,
which are then exactly the subset's accuracies; training, bytes, consensus and the averaged model are untouched."""

import math

import pytest
import torch

from peerlearn.build import build
from peerlearn.config import ConfigError
from peerlearn.engines import simulate
from peerlearn.engines.run import TIMINGS
from peerlearn.models.functional import predicted_matches
from tests.conftest import tiny_config

ALL_NODES = ("loss_mean", "consensus_distance", "bytes_sent_total", "acc_avg_model", "alive_nodes")


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def _rows(rows):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def _run(**sets):
    built = build(tiny_config(num_rounds=10, eval_every=5, **sets))
    final = {}
    rows = simulate(built, on_finish=lambda p: final.update(params=p))
    return built, rows, final["params"]


def test_all_nodes_as_the_subset_is_the_default():
    (_, full, _), (built, same, _) = _run(), _run(eval_nodes=16)
    assert built.eval_N is None
    for a, b in zip(_rows(full), _rows(same), strict=True):
        assert a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sets", [{}, {"threat": {"num_byzantine": 3, "attack": "gaussian"}},
                                  {"data": {"dataset": "digits", "partition": "iid", "local_test_fraction": 0.2}}])
def test_a_subset_reports_its_own_accuracies_and_leaves_the_rest(sets):
    (_, full, _), (built, sub, params) = _run(**sets), _run(eval_nodes=5, **sets)
    assert int(built.eval_N.sum()) == 5
    assert torch.equal(built.eval_N, _run(eval_nodes=5, **sets)[0].eval_N)  # seeded: the same nodes again
    for a, b in zip(full, sub, strict=True):
        assert all(_same(a[k], b[k]) for k in ALL_NODES), [(k, a[k], b[k]) for k in ALL_NODES]
    measured = built.eval_N & built.honest_N
    ds = built.dataset
    acc = predicted_matches(built.flat, params[measured], ds.x_test, [ds.y_test])[0]
    assert sub[-1]["acc_mean"] == pytest.approx(float(acc.mean()), abs=1e-12)
    assert sub[-1]["acc_min"] == float(acc.min()) and sub[-1]["acc_max"] == float(acc.max())


def test_more_evaluated_nodes_than_nodes_is_a_config_error():
    with pytest.raises(ConfigError, match="eval_nodes: must be at most num_nodes=16"):
        tiny_config(eval_nodes=17)
