"""MeritRank: exact walk visits against Monte Carlo walks, the bound on what Sybils gain, connectivity decay,
Sybils that only vouch for each other, and the scorer in a run."""

import numpy as np
import pytest
import torch

from peerlearn.attribution.meritrank import meritrank, walk_visits
from peerlearn.build import build
from peerlearn.engines import simulate
from tests.conftest import tiny_config

ALPHA = 0.85


def _honest_graph(n: int = 11, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    feedback = (torch.rand(n, n, generator=g) < 0.4).double() * torch.rand(n, n, generator=g, dtype=torch.float64)
    feedback.fill_diagonal_(0.0)
    return feedback


def _with_sybils(base: torch.Tensor, attacker: int, k: int) -> torch.Tensor:
    """The attacker moves all its feedback to k Sybils, which vouch for each other and for it."""
    n = base.shape[0] + k
    feedback = torch.zeros(n, n, dtype=torch.float64)
    feedback[: base.shape[0], : base.shape[0]] = base
    feedback[attacker] = 0.0
    feedback[attacker, base.shape[0]:] = 1.0
    feedback[base.shape[0]:, base.shape[0]:] = 1.0
    feedback[base.shape[0]:, attacker] = 1.0
    feedback.fill_diagonal_(0.0)
    return feedback


def test_exact_visits_match_monte_carlo_walks():
    feedback = _honest_graph(8, seed=3)
    exact = walk_visits(feedback, ALPHA)
    rng, walks, ego = np.random.default_rng(0), 40_000, 2
    P = feedback.numpy() / np.maximum(feedback.numpy().sum(1, keepdims=True), 1e-300)
    visits = np.zeros(8)
    for _ in range(walks):
        node = ego
        while rng.random() < ALPHA and P[node].sum() > 0:
            node = rng.choice(8, p=P[node] / P[node].sum())
            if node == ego:
                break
            visits[node] += 1
    assert np.allclose(visits / walks, exact[ego].numpy(), atol=0.02), (visits / walks, exact[ego])


@pytest.mark.parametrize("k", [1, 2, 5, 20])
def test_k_sybils_gain_at_most_one_over_one_minus_alpha_of_one_identity(k):
    base, attacker = _honest_graph(), 10
    one = meritrank(base, ALPHA)[:attacker, attacker]  # what the attacker gets alone, from each honest ego
    sybil = meritrank(_with_sybils(base, attacker, k), ALPHA)[:attacker, attacker:].sum(1)
    assert bool((sybil <= one / (1 - ALPHA) + 1e-12).all()), (sybil, one / (1 - ALPHA))
    assert bool((sybil > one).any())  # the attack does gain something: the bound is what holds it


def test_connectivity_decay_takes_beta_off_every_sybil_behind_its_attacker():
    base = _honest_graph()
    feedback = _with_sybils(base, 10, 5)
    plain, decayed = meritrank(feedback, ALPHA), meritrank(feedback, ALPHA, beta=0.5)
    assert torch.allclose(decayed[:10, 11:], 0.5 * plain[:10, 11:])
    # the honest nodes' reputations are those of the graph where the attacker just gives no feedback: a walk that
    # enters the Sybil region never comes back, as one that stops at a silent attacker
    silent = base.clone()
    silent[10] = 0.0
    assert torch.allclose(decayed[:10, :10], meritrank(silent, ALPHA, beta=0.5)[:10, :10], atol=1e-12)


def test_sybils_that_only_vouch_for_each_other_change_no_honest_reputation():
    base = _honest_graph()
    feedback = torch.zeros(16, 16, dtype=torch.float64)
    feedback[:11, :11] = base
    feedback[11:, 11:] = 1.0
    feedback.fill_diagonal_(0.0)
    for beta in (0.0, 0.5):
        ranked = meritrank(feedback, ALPHA, beta)
        assert torch.allclose(ranked[:11, :11], meritrank(base, ALPHA, beta), atol=1e-12)
        assert float(ranked[:11, 11:].abs().max()) == 0.0


def test_the_meritrank_scorer_in_a_run_gives_a_noise_sender_no_reputation():
    cfg = tiny_config(num_rounds=20, eval_every=20, topology={"graph": "random_regular", "degree": 4},
                      threat={"attack": "gaussian", "num_byzantine": 2, "sigma": 0.3},
                      attribution={"score": "meritrank"})
    rows = simulate(build(cfg))
    assert rows[-1]["score_auc"] == 1.0 and rows[-1]["score_byzantine_mean"] < 0.1 * rows[-1]["score_honest_mean"]
