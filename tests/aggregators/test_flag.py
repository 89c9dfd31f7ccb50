"""The Flag aggregator: its Gram-matrix subspace equals the thin SVD it stands for, an outlying direction
loses its weight, a line of inputs passes whole, and in a run it withstands sign-flipping where gossip does not."""

import torch

from peerlearn.aggregators.flag import _subspace, flag_aggregate, flag_scores
from peerlearn.build import build
from peerlearn.engines import simulate
from tests.conftest import tiny_config


def test_the_gram_route_gives_the_thin_svd_subspace_and_its_projection():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 40, dtype=torch.float64)
    valid = torch.ones(3, 7, dtype=torch.bool)
    d = x - x[:, :1]
    ok = valid.clone()
    ok[:, 0] = False
    u = d / d.norm(dim=2, keepdim=True).clamp_min(1e-30)
    V, s, w = _subspace(u * ok[..., None], ok, 2, 4, 1e-6)
    out = flag_aggregate(x, valid, r=2, cap=False)
    for n in range(3):
        A = (w[n, :, None] * u[n] * ok[n, :, None])  # the weighted inputs, one per row
        Y = torch.linalg.svd(A.T, full_matrices=False).U[:, :2]  # top-2 left singular vectors
        mean_d = d[n, 1:].sum(0) / 7
        assert torch.allclose(out[n], x[n, 0] + Y @ (Y.T @ mean_d), atol=1e-10)


def test_an_input_off_the_shared_direction_scores_lowest_and_is_left_out():
    torch.manual_seed(1)
    base = torch.randn(30)
    honest = [base * (1 + 0.05 * k) + 0.01 * torch.randn(30) for k in range(6)]
    outlier = torch.randn(30)
    outlier = 3 * (outlier - (outlier @ base) / (base @ base) * base)  # orthogonal to the shared direction
    x = torch.stack([torch.zeros(30), *honest, outlier])[None]
    valid = torch.ones(1, 8, dtype=torch.bool)
    ratio = flag_scores(x, valid)
    assert int(ratio[0, 1:].argmin()) == 6 and float(ratio[0, 7]) < 0.05 < float(ratio[0, 1:7].min())
    out = flag_aggregate(x, valid, r=1, cap=False)[0]
    along = out @ base / base.norm()
    assert abs(float(out @ outlier) / float(outlier.norm())) < 0.05 * float(along)  # the outlier's part is gone


def test_inputs_on_one_line_pass_whole_and_equal_inputs_change_nothing():
    direction = torch.randn(20)
    x = torch.stack([torch.zeros(20)] + [c * direction for c in (1.0, 2.0, 3.0)])[None]
    valid = torch.ones(1, 4, dtype=torch.bool)
    assert torch.allclose(flag_aggregate(x, valid, cap=False)[0], 1.5 * direction, atol=1e-5)  # (0+1+2+3)/4
    capped = flag_aggregate(x, valid)[0]  # each capped at the median norm, 2|direction|
    assert torch.allclose(capped, (1.0 + 2.0 + 2.0) / 4 * direction, atol=1e-5)
    same = torch.ones(2, 5, 8)
    assert torch.equal(flag_aggregate(same, torch.ones(2, 5, dtype=torch.bool)), same[:, 0])


def test_flag_as_the_dsgd_aggregator_withstands_sign_flipping_where_gossip_does_not():
    threat = {"attack": "sign_flip", "num_byzantine": 2}
    acc = {agg: simulate(build(tiny_config(num_rounds=40, eval_every=40, threat=threat,
                                           topology={"graph": "random_regular", "degree": 4},
                                           algorithm={"aggregator": agg})))[-1]["acc_mean"]
           for agg in ("gossip", "flag")}
    assert acc["flag"] > acc["gossip"] + 0.25, acc  # measured: 0.40 against 0.10
