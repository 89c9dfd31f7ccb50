"""CHOCO-SGD: compressed gossip with public copies."""

import pytest
import torch

from peerlearn.config import ConfigError
from peerlearn.build import build
from peerlearn.engines import simulate
from tests.conftest import tiny_config


def _final(cfg):
    out = {}
    rows = simulate(build(cfg), on_finish=lambda p: out.setdefault("params", p))
    return rows, out["params"]


def test_uncompressed_choco_with_unit_step_is_dsgd():
    rows_c, params_c = _final(tiny_config(algorithm={"name": "choco", "consensus_lr": 1.0}, topology={"graph": "torus"}))
    rows_d, params_d = _final(tiny_config(topology={"graph": "torus"}))
    torch.testing.assert_close(params_c, params_d, atol=1e-5, rtol=0)
    assert [r["acc_mean"] for r in rows_c] == pytest.approx([r["acc_mean"] for r in rows_d], abs=1e-3)
    assert rows_c[-1]["bytes_sent_total"] == rows_d[-1]["bytes_sent_total"]


def test_public_copies_track_the_sum_and_bytes_are_the_encoded_ones():
    """s = W x_hat is kept by increments; the average of x_hat follows the average of what was sent."""
    cfg = tiny_config(algorithm={"name": "choco", "compressor": "top_k", "compress_ratio": 0.05,
                                 "consensus_lr": 0.3}, topology={"graph": "ring"}, num_rounds=10, eval_every=10)
    built = build(cfg)
    snaps = []
    rows = simulate(built, on_checkpoint=lambda s: snaps.append(s))
    state = snaps[-1]["state"]
    torch.testing.assert_close(state.mixed_NP, torch.from_numpy(built.W.toarray()).float() @ state.public_NP,
                               atol=1e-4, rtol=1e-4)
    p = built.params_NP.shape[1]
    k = round(0.05 * p)
    per_message = min(8 * k, -(-p // 8) + 4 * k)
    assert rows[-1]["bytes_sent_total"] == 10 * 16 * 2 * per_message  # 10 rounds, 16 nodes, 2 neighbours


@pytest.mark.parametrize("compression", [{"compressor": "top_k", "compress_ratio": 0.1, "consensus_lr": 0.4},
                                         {"compressor": "qsgd", "qsgd_levels": 4, "consensus_lr": 0.5}],
                         ids=["top_k-10%", "qsgd-4-levels"])
def test_compressed_choco_learns_like_dsgd_with_several_times_fewer_bytes(compression):
    compressed, _ = _final(tiny_config(algorithm={"name": "choco", **compression}, num_rounds=60, eval_every=20))
    dense, _ = _final(tiny_config(num_rounds=60, eval_every=20))
    alone, _ = _final(tiny_config(algorithm={"name": "local"}, num_rounds=60, eval_every=20))
    assert compressed[-1]["acc_avg_model"] > dense[-1]["acc_avg_model"] - 0.02
    assert compressed[-1]["acc_mean"] > alone[-1]["acc_mean"] + 0.05  # the compressed messages carry knowledge
    assert compressed[-1]["bytes_sent_total"] * 7 < dense[-1]["bytes_sent_total"]


def test_qsgd_for_choco_is_a_contraction():
    from peerlearn.compressors import qsgd

    c = qsgd(4, seed=0, contract=True)
    x = torch.randn(8, 1000, generator=torch.Generator().manual_seed(0))
    state, errs = c.init(x), []
    for _ in range(50):
        out, _, state = c.update(x, state)
        errs.append(float(((out - x) ** 2).sum() / (x ** 2).sum()))
    assert sum(errs) / len(errs) < 1.0 and not c.unbiased


@pytest.mark.parametrize("sections, field", [
    ({"algorithm": {"compressor": "top_k"}}, "algorithm.compressor"),
    ({"algorithm": {"name": "choco"}, "topology": {"schedule": "random_matching"}}, "algorithm.name"),
    ({"algorithm": {"name": "choco"}, "faults": {"link_failure": 0.1}}, "algorithm.name"),
    ({"algorithm": {"name": "choco", "compressor": "zip"}}, "algorithm.compressor"),
    ({"algorithm": {"name": "choco", "compress_ratio": 0.0}}, "algorithm.compress_ratio"),
])
def test_compression_config_errors_name_the_field(sections, field):
    with pytest.raises(ConfigError, match=field):
        tiny_config(**sections)
