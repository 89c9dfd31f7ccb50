"""Experiment-level acceptance checks (slow: `make test-slow`, run by CI after the fast suite)."""

import json
from pathlib import Path

import pytest

from peerlearn import cli
from peerlearn.config import load_config, parse_config
from peerlearn.build import build
from peerlearn.data.datasets import FASHION_MNIST_DIRS
from peerlearn.engines import simulate

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quickstart_reaches_090_in_under_60_seconds(tmp_path, seed):
    out = tmp_path / "qs"
    assert cli.main(["run", str(ROOT / "configs/quickstart.yaml"), "--set", f"seed={seed}", "--out", str(out),
                     "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_nodes"] == 64 and summary["final"]["round"] == 500
    assert summary["final"]["acc_mean"] >= 0.90, summary["final"]
    assert summary["wall_time_s"] < 60


def test_more_connectivity_learns_better_under_label_skew():
    """Local-only < ring < complete on the same non-IID split: communication is what makes it work."""
    final = {}
    for name, over in {"local": {"algorithm": {"name": "local"}}, "ring": {},
                       "complete": {"topology": {"graph": "complete"}}}.items():
        cfg = {"num_nodes": 32, "num_rounds": 200, "eval_every": 200,
               "data": {"partition": "dirichlet", "alpha": 0.3},
               "algorithm": {"name": "dsgd", "lr": 0.2}, **over}
        if "algorithm" in over:
            cfg["algorithm"] = {"lr": 0.2, **over["algorithm"]}
        final[name] = simulate(build(parse_config(cfg)))[-1]["acc_mean"]
    assert final["local"] + 0.2 < final["ring"] < final["complete"] + 0.02, final


@pytest.mark.skipif(not Path(FASHION_MNIST_DIRS[0]).is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_learns():
    cfg = parse_config({"num_nodes": 8, "num_rounds": 60, "eval_every": 60, "topology": {"graph": "ring"},
                        "data": {"dataset": "fashion_mnist", "test_samples": 2000},
                        "model": {"name": "mlp", "hidden": [64]}, "algorithm": {"lr": 0.1, "batch_size": 32}})
    assert simulate(build(cfg))[-1]["acc_mean"] > 0.65


def test_mnist1d_learns():
    cfg = parse_config({"num_nodes": 8, "num_rounds": 300, "eval_every": 300, "topology": {"graph": "complete"},
                        "data": {"dataset": "mnist1d", "num_samples": 2000},
                        "model": {"name": "mlp", "hidden": [64]},
                        "algorithm": {"lr": 0.1, "momentum": 0.9, "batch_size": 32}})
    assert simulate(build(cfg))[-1]["acc_mean"] > 0.35  # chance is 0.10


@pytest.mark.slow
def test_single_merge_after_low_communication_dsgd_nears_fedavg():
    """'A Single Merging Suffices': low-communication D-SGD on a torus, one final merge, within 2 points
    of FedAvg with every client on the same compute (docs/reproductions.md)."""
    merged = simulate(build(load_config(ROOT / "configs/single_merge.yaml")))[-1]
    fedavg = simulate(build(load_config(ROOT / "configs/fedavg.yaml", ["algorithm.fraction=1.0"])))[-1]
    assert merged["acc_mean"] > fedavg["acc_mean"] - 0.02, (merged["acc_mean"], fedavg["acc_mean"])
    assert merged["bytes_sent_total"] < 0.5 * fedavg["bytes_sent_total"]


@pytest.mark.slow
def test_diloco_matches_synchronous_training_with_twenty_times_less_communication():
    diloco = simulate(build(load_config(ROOT / "configs/diloco.yaml")))[-1]
    sync = simulate(build(load_config(ROOT / "configs/centralized.yaml", ["num_rounds=600"])))[-1]
    same_comm = simulate(build(load_config(ROOT / "configs/centralized.yaml", ["num_rounds=30", "eval_every=5"])))[-1]
    assert diloco["acc_mean"] > sync["acc_mean"] - 0.02
    assert diloco["acc_mean"] > same_comm["acc_mean"] + 0.1
    assert diloco["bytes_sent_total"] * 19 < sync["bytes_sent_total"]


def test_choco_top_1_percent_reaches_dsgd_within_2_points_with_10x_fewer_bytes():
    """Issue 7's claim on the quickstart: CHOCO-SGD with top-1% messages gets within 2 points of
    uncompressed D-SGD's final mean accuracy while sending at least 10x fewer bytes."""
    from peerlearn.metrics import first_reaching

    dense = simulate(build(load_config(ROOT / "configs/quickstart.yaml")))[-1]
    rows = simulate(build(load_config(ROOT / "configs/choco.yaml", ["num_rounds=2500"])))
    hit = first_reaching(rows, dense["acc_mean"] - 0.02, "acc_mean")
    assert hit is not None, (dense["acc_mean"], rows[-1]["acc_mean"])
    assert hit["bytes_sent_per_node"] * 10 <= dense["bytes_sent_per_node"], (hit["round"], hit["bytes_sent_per_node"])
