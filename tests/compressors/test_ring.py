"""The quantized ring all-reduce: exact with a lossless codec, the ring's bytes, a small error with int8 where
the all-gather it replaces sends many times more, and DiLoCo over it (the same rows on the distributed engine)."""

import pytest
import torch

from peerlearn.build import build
from peerlearn.compressors.quantize import identity, int8
from peerlearn.compressors.ring import ring_all_reduce, ring_all_reduce_mean
from peerlearn.config import ConfigError
from peerlearn.engines import simulate
from peerlearn.engines.comm import SimComm
from tests.conftest import tiny_config


@pytest.mark.parametrize("n, p", [(4, 40), (5, 37), (1, 9), (8, 3)])
def test_a_lossless_codec_gives_the_exact_mean_and_the_ring_s_bytes(n, p):
    rows = torch.randn(n, p, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    codec = identity()
    mean, sent, _ = ring_all_reduce(rows, codec, codec.init(rows))
    torch.testing.assert_close(mean, rows.mean(0))
    # node i sends every chunk but chunk i+1 once (reduce-scatter), then chunk i+1, which it ends up holding,
    # n - 1 times (all-gather); 8 bytes a coordinate here. With p a multiple of n: the dense ring's 2 (n-1)/n rows
    size = -(-p // n)
    length = (p - size * torch.arange(n)).clamp(0, size).double()
    held = length.roll(-1)
    torch.testing.assert_close(sent, 8 * (p - held + (n - 1) * held))
    if p % n == 0:
        torch.testing.assert_close(sent, torch.full((n,), 2.0 * (n - 1) / n * p * 8, dtype=torch.float64))


def test_int8_on_the_ring_errs_little_and_sends_a_quarter_of_the_dense_ring():
    n, p = 16, 4096
    rows = torch.randn(n, p, generator=torch.Generator().manual_seed(0))
    codec = int8()
    mean, sent, _ = ring_all_reduce(rows, codec, codec.init(rows))
    exact = rows.mean(0)
    # 16 hops of int8 rounding on partial sums: relative error of a few 0.1%
    assert float((mean - exact).norm() / exact.norm()) < 0.02
    assert sent.tolist() == [2 * (n - 1) * (p // n + 8)] * n  # each chunk: its int8 codes, an offset and a scale
    dense_ring = 2 * (n - 1) / n * p * 4
    assert sent[0] < dense_ring / 3.8


def test_the_mean_reaches_every_node_s_byte_count_through_the_comm():
    n, p = 6, 30
    comm = SimComm(num_nodes=n)
    rows = torch.randn(n, p, generator=torch.Generator().manual_seed(1))
    codec = identity()
    mean, _ = ring_all_reduce_mean(comm, rows, codec, codec.init(rows))
    torch.testing.assert_close(mean, rows.mean(0))
    assert comm.bytes_sent_N.tolist() == [2.0 * (n - 1) / n * p * 4] * n


def _diloco(**algorithm):
    return tiny_config(num_rounds=6, eval_every=3, topology={"graph": "complete"},
                       algorithm={"name": "diloco", "num_local_steps": 5, **algorithm})


def test_diloco_on_an_int8_ring_tracks_the_dense_run_at_a_quarter_of_the_bytes():
    dense = simulate(build(_diloco()))[-1]
    ring = simulate(build(_diloco(compressor="int8", reduce="ring")))[-1]
    gathered = simulate(build(_diloco(compressor="int8")))[-1]
    assert abs(ring["acc_mean"] - dense["acc_mean"]) < 0.03, (ring["acc_mean"], dense["acc_mean"])
    assert ring["bytes_sent_per_node"] < dense["bytes_sent_per_node"] / 3.5
    assert gathered["bytes_sent_per_node"] > 2 * dense["bytes_sent_per_node"]  # 15 int8 rows against 2 x 15/16


def test_only_a_quantizer_rides_the_ring():
    with pytest.raises(ConfigError, match=r"^config error: algorithm\.reduce: ring re-encodes partial sums"):
        _diloco(compressor="top_k", reduce="ring")
