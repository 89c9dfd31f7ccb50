"""Shared-randomness SPSA ("Just One Byte")."""

import pytest
import torch

from peerlearn.algorithms.spsa import LEVELS, directional_derivatives, quantize
from peerlearn.build import build
from peerlearn.engines import simulate
from tests.conftest import tiny_config


def test_the_two_point_estimate_is_a_directional_derivative_and_averages_to_the_gradient():
    b = build(tiny_config(model={"name": "logreg"}))
    from peerlearn.models.functional import make_probe_loss_fn

    params = b.params_NP[:1]
    batch = tuple(t[:1] for t in b.batches.next())
    _, grad = b.grad_fn(params, batch)
    z = torch.randn(1, 4000, params.shape[1], generator=torch.Generator().manual_seed(0))
    p, _ = directional_derivatives(make_probe_loss_fn(b.flat), params, z, batch, eps=1e-3)
    torch.testing.assert_close(p[0, :5], z[0, :5] @ grad[0], atol=2e-3, rtol=2e-2)  # p = z . grad L
    estimate = (p[0, :, None] * z[0]).mean(0)
    assert torch.nn.functional.cosine_similarity(estimate, grad[0], dim=0) > 0.75  # E[p z] = grad L


def test_one_byte_quantisation_is_unbiased_inside_its_range_and_clips_outside():
    g = torch.Generator().manual_seed(1)
    p = torch.tensor([0.3, -0.71, 0.0, 2.5, -9.0]).repeat(20_000, 1)
    q = quantize(p, 1.0, g)
    codes = q * LEVELS
    torch.testing.assert_close(codes, codes.round())  # 255 levels: one signed byte
    assert q.abs().max() <= 1.0
    torch.testing.assert_close(q.mean(0), torch.tensor([0.3, -0.71, 0.0, 1.0, -1.0]), atol=2e-3, rtol=0)


def test_spsa_keeps_replicas_identical_learns_and_sends_bytes_independent_of_the_model_size():
    rows_by_model = {}
    for model in ("logreg", "mlp"):
        cfg = tiny_config(num_rounds=150, eval_every=150, model={"name": model, "same_init": True},
                          algorithm={"name": "spsa", "lr": 0.05, "spsa_perturbations": 4, "batch_size": 16})
        out = {}
        rows_by_model[model] = simulate(build(cfg), on_finish=lambda p: out.setdefault("params", p))
        assert torch.equal(out["params"], out["params"][:1].expand_as(out["params"]))  # bit-identical replicas
    logreg = rows_by_model["logreg"][-1]
    assert logreg["acc_mean"] > 0.75 and logreg["consensus_distance"] == 0.0
    assert logreg["bytes_sent_total"] == 150 * 16 * 15 * 4  # rounds x nodes x peers x one byte per direction
    assert rows_by_model["mlp"][-1]["bytes_sent_total"] == logreg["bytes_sent_total"]


def test_spsa_needs_one_global_model():
    from peerlearn.config import ConfigError

    with pytest.raises(ConfigError, match="same_init"):
        build(tiny_config(algorithm={"name": "spsa"}, model={"same_init": False}))
