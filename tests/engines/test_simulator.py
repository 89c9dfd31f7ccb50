import math

import pytest

from peerlearn.build import build
from peerlearn.engines import simulate
from peerlearn.engines.run import COLUMNS
from tests.conftest import tiny_config


def test_rows_have_every_column_and_sane_values():
    rows = simulate(build(tiny_config(num_rounds=42, eval_every=20, algorithm={"lr": 0.3})))
    assert [r["round"] for r in rows] == [0, 20, 40, 42]
    for r in rows:
        assert set(COLUMNS) <= set(r)
        assert 0.0 <= r["acc_min"] <= r["acc_mean"] <= r["acc_max"] <= 1.0
    assert math.isnan(rows[0]["loss_mean"]) and rows[0]["bytes_sent_total"] == 0
    assert rows[-1]["bytes_sent_total"] > rows[1]["bytes_sent_total"] > 0
    assert rows[-1]["bytes_sent_per_node"] == pytest.approx(rows[-1]["bytes_sent_total"] / 16)
    assert rows[-1]["acc_mean"] > rows[0]["acc_mean"] + 0.2  # it learns


def test_ring_bytes_are_exact():
    b = build(tiny_config(num_rounds=3, eval_every=3))
    rows = simulate(b)
    p = b.flat.num_params
    assert rows[-1]["bytes_sent_total"] == 3 * 16 * 2 * 4 * p  # 3 rounds, 16 nodes, 2 neighbours, float32


def test_consensus_distance_orders_ring_torus_complete():
    final = {}
    for graph in ("ring", "torus", "complete"):
        cfg = tiny_config(num_rounds=30, eval_every=30, topology={"graph": graph},
                          data={"partition": "dirichlet", "alpha": 0.3})
        final[graph] = simulate(build(cfg))[-1]["consensus_distance"]
    assert final["ring"] > final["torus"] > final["complete"]


def test_local_test_split_metric():
    rows = simulate(build(tiny_config(num_rounds=10, eval_every=10, data={"local_test_fraction": 0.25})))
    assert 0.0 <= rows[-1]["acc_local_mean"] <= 1.0 and rows[-1]["acc_local_mean"] > rows[0]["acc_local_mean"]


def test_divergence_is_reported():
    with pytest.raises(FloatingPointError, match="lower algorithm.lr"):
        simulate(build(tiny_config(num_rounds=50, algorithm={"lr": 1e30})))


def test_personalization_metrics_see_what_the_global_test_set_hides():
    """Local-only training on two classes per node: each model is good on its own distribution (its held-out
    split) and poor on the global test set; min <= worst 10% <= mean, and nodes differ (std > 0)."""
    cfg = tiny_config(num_rounds=60, eval_every=60, data={"partition": "shards", "classes_per_node": 2,
                                                           "local_test_fraction": 0.25},
                      algorithm={"name": "local"})
    last = simulate(build(cfg))[-1]
    assert last["acc_local_mean"] > 0.8 > 0.3 > last["acc_mean"]
    assert last["acc_local_min"] <= last["acc_local_worst10"] <= last["acc_local_mean"]
    assert last["acc_local_std"] > 0.0
    plain = simulate(build(tiny_config(num_rounds=2, eval_every=2)))[-1]
    assert all(math.isnan(plain[k]) for k in ("acc_local_min", "acc_local_std", "acc_local_worst10"))
