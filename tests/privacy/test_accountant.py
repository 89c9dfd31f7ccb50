"""The exact accountant (issue 23): composed Gaussian releases are one GDP mechanism, and its (epsilon,
delta) curve is the tightest bound; Opacus's PRV accountant (a numerical PLD) agrees, RDP overstates."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from peerlearn.privacy.accountant import epsilons, exact_epsilons, gaussian_rdp, gdp_delta, gdp_epsilon

SETTINGS = [(1.0, 1), (2.0, 100), (5.0, 300), (10.0, 500)]


@pytest.mark.parametrize("sigma, rounds", SETTINGS)
def test_exact_epsilon_solves_the_gaussian_curve_and_agrees_with_a_pld_accountant(sigma, rounds):
    from opacus.accountants import PRVAccountant

    eps = exact_epsilons(gaussian_rdp(np.array([sigma])) * rounds, 1e-5)[0]
    mu = np.sqrt(rounds) / sigma
    assert gdp_delta(eps, mu) == pytest.approx(1e-5, rel=1e-6)  # the closed-form curve, solved
    prv = PRVAccountant()
    prv.history = [(sigma, 1.0, rounds)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        numeric = prv.get_epsilon(delta=1e-5)
    assert eps <= numeric <= eps * 1.005  # PRV is an upper bound with discretisation error, within 0.5%
    rdp = epsilons(gaussian_rdp(np.array([sigma])) * rounds, 1e-5)[0]
    assert 0.05 * rdp < rdp - eps < 0.08 * rdp  # RDP's conversion overstates by 5-8% here


def test_composition_is_one_mechanism_of_the_summed_precisions():
    """T releases at sigma are one release at sigma / sqrt(T); different multipliers add 1 / sigma^2."""
    many = exact_epsilons(gaussian_rdp(np.array([3.0])) * 25, 1e-6)[0]
    assert many == pytest.approx(gdp_epsilon(np.sqrt(25) / 3.0, 1e-6), rel=1e-9)
    mixed = exact_epsilons(gaussian_rdp(np.array([1.0])) + gaussian_rdp(np.array([2.0])), 1e-6)[0]
    assert mixed == pytest.approx(gdp_epsilon(np.sqrt(1.0 + 0.25), 1e-6), rel=1e-9)


def test_no_release_no_noise_and_tiny_releases():
    rdp = np.stack([np.zeros(len(gaussian_rdp(np.array([1.0]))[0])), gaussian_rdp(np.array([0.0]))[0],
                    gaussian_rdp(np.array([1e4]))[0]])
    eps = exact_epsilons(rdp, 1e-5)
    assert eps[0] == 0.0 and eps[1] == np.inf and 0.0 <= eps[2] < 1e-3


def test_a_run_with_the_exact_accountant_trains_alike_and_reports_less_epsilon():
    from peerlearn.build import build
    from peerlearn.engines import simulate
    from tests.conftest import tiny_config

    privacy = {"clip": 1.0, "noise_multiplier": 2.0}
    rdp = simulate(build(tiny_config(privacy=privacy)))
    exact = simulate(build(tiny_config(privacy={**privacy, "accountant": "exact"})))
    for a, b in zip(rdp, exact):
        assert a["acc_mean"] == b["acc_mean"] and a["consensus_distance"] == b["consensus_distance"]
        if a["round"] > 0:
            assert a["loss_mean"] == b["loss_mean"]
            assert 0.9 * a["epsilon"] < b["epsilon"] < a["epsilon"]
