"""RQM: the exact output distribution against the sampler, unbiasedness, the Renyi divergence in closed form where
there is one, composition over coordinates and rounds in a run, and what the config refuses."""

import math

import numpy as np
import pytest
import torch

from peerlearn.build import build
from peerlearn.config import ConfigError
from peerlearn.engines import simulate
from peerlearn.privacy.accountant import epsilons, orders
from peerlearn.privacy.rqm import levels, renyi_divergence, rqm_pmf, rqm_quantize, rqm_rdp
from tests.conftest import tiny_config


def test_the_sampler_draws_the_exact_distribution_and_is_unbiased():
    m, keep, c = 8, 0.4, 2.0
    xs = np.array([-1.0, -0.3, 0.0, 0.55, 1.0, 1.999])
    pmf = rqm_pmf(xs, m, keep, c)
    np.testing.assert_allclose(pmf.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(pmf @ levels(m, c), xs, atol=1e-12)  # E[Q(x)] = x
    draws = 200_000
    x = torch.tensor(xs, dtype=torch.float64)[:, None].expand(len(xs), draws).contiguous()
    out = rqm_quantize(x, m, keep, c, torch.Generator().manual_seed(0))
    empirical = torch.stack([(out == lv).double().mean(1) for lv in torch.tensor(levels(m, c))], 1).numpy()
    # every draw lands on a level, with the exact probabilities (5 standard errors of a frequency at 200k draws)
    assert empirical.sum(1) == pytest.approx(1.0)
    assert np.abs(empirical - pmf).max() < 5 * math.sqrt(0.25 / draws)
    assert torch.allclose(out.mean(1), torch.tensor(xs, dtype=torch.float64), atol=0.01)


def test_keeping_every_level_is_plain_randomized_rounding_between_the_two_neighbours():
    pmf = rqm_pmf(np.array([0.3]), 4, 1.0 - 1e-15, 1.0)[0]  # levels -1, -0.5, 0, 0.5, 1
    np.testing.assert_allclose(pmf, [0.0, 0.0, 0.4, 0.6, 0.0], atol=1e-12)


def test_with_one_interval_the_divergence_is_that_of_two_coins():
    # m = 1: the levels are -c and c, P(c | x) = (x + c) / 2c; x = D against 0 is Bernoulli((c+D)/2c) vs 1/2
    clip, range_ = 1.0, 4.0
    rdp = rqm_rdp(clip, 1, 0.5, range_)
    p, q = (range_ * clip + clip) / (2 * range_ * clip), 0.5
    for k, a in enumerate(orders()):
        forward = math.log(p ** a * q ** (1 - a) + (1 - p) ** a * (1 - q) ** (1 - a)) / (a - 1)
        backward = math.log(q ** a * p ** (1 - a) + (1 - q) ** a * (1 - p) ** (1 - a)) / (a - 1)
        assert rdp[k] == pytest.approx(max(forward, backward), rel=1e-9)


def test_fewer_kept_levels_and_a_wider_grid_spend_less():
    base = epsilons(rqm_rdp(1.0, 8, 0.5, 2.0)[None], 1e-5)[0]
    assert epsilons(rqm_rdp(1.0, 8, 0.2, 2.0)[None], 1e-5)[0] < base
    assert epsilons(rqm_rdp(1.0, 8, 0.5, 4.0)[None], 1e-5)[0] < base
    assert renyi_divergence(np.array([0.5, 0.5]), np.array([1.0, 0.0]), 2.0) == math.inf


def test_a_run_composes_every_coordinate_of_every_round_and_trains():
    rounds = 20
    cfg = tiny_config(num_rounds=rounds, eval_every=rounds, algorithm={"lr": 0.1}, model={"name": "logreg"},
                      privacy={"clip": 0.1, "mechanism": "rqm", "rqm_levels": 4, "rqm_keep": 0.2, "rqm_range": 4.0})
    b = build(cfg)
    final = {}
    rows = simulate(b, on_checkpoint=lambda snap: final.update(state=snap["state"]))
    d = b.flat.num_params
    per_coordinate = rqm_rdp(0.1, 4, 0.2, 4.0)
    np.testing.assert_allclose(per_coordinate, rqm_rdp(1.0, 4, 0.2, 4.0), rtol=1e-9)  # scale-free: grid ~ clip
    expected = epsilons(per_coordinate[None] * d * rounds, 1e-5)[0]
    assert rows[-1]["epsilon"] == pytest.approx(expected, rel=1e-9)
    np.testing.assert_allclose(final["state"].privacy.rdp_NA.numpy()[0], per_coordinate * d * rounds)
    assert rows[-1]["acc_mean"] > 0.3  # learns through the quantizer (10 classes: chance is 0.1)
    assert simulate(build(cfg))[-1]["acc_mean"] == rows[-1]["acc_mean"]  # same seed, same draws


@pytest.mark.parametrize("privacy, message", [
    ({"mechanism": "rqm"}, "privacy.clip: rqm's grid"),
    ({"clip": 1.0, "mechanism": "rqm", "noise_multiplier": 1.0}, "privacy.noise_multiplier: rqm adds no noise"),
    ({"clip": 1.0, "mechanism": "rqm", "accountant": "exact"}, "privacy.accountant: exact composes Gaussian"),
    ({"clip": 1.0, "mechanism": "rqm", "rqm_keep": 1.0}, "privacy.rqm_keep"),
    ({"clip": 1.0, "mechanism": "rqm", "rqm_range": 1.0}, "privacy.rqm_range"),
])
def test_rqm_config_errors_name_the_field(privacy, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as err:
        build(tiny_config(privacy=privacy))
    assert "\n" not in str(err.value)
