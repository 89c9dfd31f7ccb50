"""Running loss-delta scores (the attribution scorer): a label-flipping or noise-sending neighbour ranks last
among a node's neighbours; scoring changes nothing in the run; the running mean keeps what it has not seen."""

import math

import pytest
import torch

from peerlearn.attribution.loss_delta import running_mean
from peerlearn.build import build
from peerlearn.engines import simulate
from tests.conftest import tiny_config


def _run(seed: int, attack: str | None, score: str = "loss_delta", rounds: int = 30, **extra):
    threat = {} if attack is None else {"attack": attack, "num_byzantine": 2}
    if attack == "gaussian":
        threat["sigma"] = 0.3
    cfg = tiny_config(seed=seed, num_rounds=rounds, eval_every=rounds,
                      topology={"graph": "random_regular", "degree": 4}, threat=threat,
                      attribution={"score": score, **extra})
    built, tables = build(cfg), {}
    rows = simulate(built, on_scores=lambda round_, table: tables.__setitem__(round_, table))
    return built, rows, tables[rounds]


def _ranked_last(seed: int, attack: str) -> list[bool]:
    """For every honest node with a Byzantine neighbour: is a Byzantine neighbour its lowest-scored one?"""
    built, _, table = _run(seed, attack)
    pair, byz = table["pair"], ~built.honest_N
    out = []
    for n in torch.nonzero(built.honest_N).flatten().tolist():
        seen = ~torch.isnan(pair[n])
        if bool(byz[seen].any()):
            worst = int(torch.where(seen, pair[n], torch.inf).argmin())
            out.append(bool(byz[worst]))
    return out


@pytest.mark.parametrize("attack", ["label_flip", "gaussian"])
def test_a_label_flipping_or_noise_sending_neighbour_ranks_last_in_90_percent_of_trials(attack):
    trials = [hit for seed in range(6) for hit in _ranked_last(seed, attack)]
    assert len(trials) >= 20
    assert sum(trials) / len(trials) >= 0.9, (attack, sum(trials), len(trials))


def test_scoring_a_run_changes_none_of_its_numbers_and_separates_the_attackers():
    _, scored, _ = _run(0, "label_flip")
    plain = simulate(build(tiny_config(seed=0, num_rounds=30, eval_every=30, topology={"graph": "random_regular",
                                                                                         "degree": 4},
                                       threat={"attack": "label_flip", "num_byzantine": 2})))
    for a, b in zip(plain, scored):
        assert {k: v for k, v in a.items() if k not in ("wall_time_s", "eval_time_s")} == \
               {k: v for k, v in b.items() if k in a and k not in ("wall_time_s", "eval_time_s")}
    assert scored[-1]["score_auc"] == 1.0 and scored[-1]["score_byzantine_mean"] < scored[-1]["score_honest_mean"]


def test_the_running_mean_takes_a_first_score_as_it_is_and_keeps_what_a_round_did_not_see():
    nan = math.nan
    old = torch.tensor([[nan, 1.0], [2.0, nan]], dtype=torch.float64)
    new = torch.tensor([[3.0, nan], [4.0, nan]], dtype=torch.float64)
    out = running_mean(old, new, 0.75)
    assert out[0, 0] == 3.0 and out[0, 1] == 1.0 and out[1, 0] == 0.75 * 2.0 + 0.25 * 4.0 and math.isnan(out[1, 1])
