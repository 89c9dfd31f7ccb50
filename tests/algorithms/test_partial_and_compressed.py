"""Partial model sharing (dsgd) and compressed pseudo-gradients (diloco, local_sgd)."""

import re

import pytest
import torch

from peerlearn.algorithms.dsgd import shared_coordinates
from peerlearn.config import ConfigError
from peerlearn.build import build
from peerlearn.engines import simulate
from tests.conftest import tiny_config


def _run(cfg):
    out = {}
    rows = simulate(build(cfg), on_finish=lambda p: out.setdefault("params", p))
    return rows, out["params"]


def test_partial_sharing_keeps_the_mean_mixes_only_the_shared_coordinates_and_counts_their_bytes():
    cfg = tiny_config(num_rounds=1, eval_every=1, topology={"graph": "ring"},
                      algorithm={"name": "dsgd", "share_fraction": 0.1, "lr": 0.1})
    b = build(cfg)
    no_gossip = tiny_config(num_rounds=1, eval_every=1, topology={"graph": "ring", "mixing": "uniform"},
                            algorithm={"name": "local", "lr": 0.1})
    rows, mixed = _run(cfg)
    _, trained = _run(no_gossip)  # the same local step, no gossip (the same batches: same seed)
    p = b.flat.num_params
    k = round(0.1 * p)
    idx = shared_coordinates(p, 0.1, _share_seed(b), 1)
    kept = torch.ones(p, dtype=torch.bool)
    kept[idx] = False
    torch.testing.assert_close(mixed[:, kept], trained[:, kept])  # the other 90% stayed local
    assert not torch.allclose(mixed[:, idx], trained[:, idx])  # the shared 10% were mixed...
    torch.testing.assert_close(mixed.mean(0), trained.mean(0), atol=1e-6, rtol=0)  # ...keeping the network mean
    assert rows[-1]["bytes_sent_total"] == 16 * 2 * 4 * k  # 16 nodes, 2 neighbours, k float32 values, no index


def _share_seed(built):
    from peerlearn.rng import stream_seed

    return stream_seed(built.config.seed, "share")


def test_partial_sharing_draws_a_new_subset_each_round_and_learns_with_fewer_bytes():
    assert not torch.equal(shared_coordinates(1000, 0.1, 7, 1), shared_coordinates(1000, 0.1, 7, 2))
    torch.testing.assert_close(shared_coordinates(1000, 0.1, 7, 3), shared_coordinates(1000, 0.1, 7, 3))
    full, _ = _run(tiny_config(num_rounds=60, eval_every=60, topology={"graph": "ring"}, algorithm={"lr": 0.2}))
    part, _ = _run(tiny_config(num_rounds=60, eval_every=60, topology={"graph": "ring"},
                               algorithm={"lr": 0.2, "share_fraction": 0.25}))
    p = build(tiny_config()).flat.num_params
    assert full[-1]["bytes_sent_total"] == 60 * 16 * 2 * 4 * p
    assert part[-1]["bytes_sent_total"] == 60 * 16 * 2 * 4 * round(0.25 * p)
    assert part[-1]["acc_mean"] > 0.6 and part[-1]["consensus_distance"] > full[-1]["consensus_distance"]


def test_identity_compressed_diloco_is_dense_diloco_and_counts_an_all_gather():
    dense_rows, dense = _run(tiny_config(algorithm={"name": "diloco", "num_local_steps": 4}, model={"same_init": True}))
    rows, comp = _run(tiny_config(algorithm={"name": "diloco", "num_local_steps": 4, "compressor": "fp16"},
                                  model={"same_init": True}))
    torch.testing.assert_close(comp, dense, atol=2e-3, rtol=0)  # fp16 with error feedback: the same run, nearly
    p, n, rounds = build(tiny_config()).flat.num_params, 16, 20
    assert dense_rows[-1]["bytes_sent_total"] == pytest.approx(rounds * n * 2 * (n - 1) / n * 4 * p)  # ring all-reduce
    assert rows[-1]["bytes_sent_total"] == pytest.approx(rounds * n * (n - 1) * 2 * p)  # all-gather of 2P bytes


def test_top_k_local_sgd_with_error_feedback_learns_and_the_residual_holds_what_was_not_sent():
    cfg = tiny_config(num_rounds=60, eval_every=60, model={"same_init": True},
                      algorithm={"name": "local_sgd", "num_local_steps": 2, "lr": 0.2, "compressor": "top_k",
                                 "compress_ratio": 0.01})
    snaps = []
    rows = simulate(build(cfg), on_checkpoint=snaps.append)
    dense = simulate(build(tiny_config(num_rounds=60, eval_every=60, model={"same_init": True},
                                       algorithm={"name": "local_sgd", "num_local_steps": 2, "lr": 0.2})))
    assert rows[-1]["acc_mean"] > dense[-1]["acc_mean"] - 0.1
    assert rows[-1]["bytes_sent_total"] < 0.2 * dense[-1]["bytes_sent_total"]
    residual = snaps[-1]["state"].compressor_state.residual_NP
    assert residual.abs().sum() > 0 and (residual != 0).float().mean() > 0.5  # most coordinates wait their turn


@pytest.mark.parametrize("algorithm, message", [
    ({"name": "dsgd", "compressor": "top_k"}, "algorithm.compressor: not a key of algorithm dsgd"),
    ({"name": "diloco", "compressor": "top_k", "combine": "gossip"}, "algorithm.compressor: diloco compresses"),
    ({"share_fraction": 0.5, "variance_correction": True}, "algorithm.share_fraction: variance correction"),
    ({"share_fraction": 0.0}, "algorithm.share_fraction"),
])
def test_config_errors(algorithm, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        build(tiny_config(algorithm=algorithm, model={"same_init": True}))
    assert "\n" not in str(err.value)
