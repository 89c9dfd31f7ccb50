"""The divergence rule (issue 19): one rule for every algorithm and engine, configurable, never under attack."""

from __future__ import annotations

import json

import numpy as np
import pytest

from peerlearn import cli
from peerlearn.build import build
from peerlearn.divergence import Diverged, DivergenceWatch
from peerlearn.engines import simulate
from peerlearn.metrics import consensus_distance
from tests.conftest import tiny_config

# each ended "completed" at chance accuracy with losses up to 1e26 before the rule (issue 19, item 4)
EXPLODING = {
    "fedavg": {"name": "fedavg", "lr": 1e6, "num_local_steps": 2, "fraction": 0.5},
    "gossip_learning": {"name": "gossip_learning", "lr": 1e6},
    "diloco": {"name": "diloco", "outer_lr": 1e6, "num_local_steps": 2},
    "dsgd": {"name": "dsgd", "lr": 1e6},
    "push_sum": {"name": "push_sum", "lr": 1e6},
}


@pytest.mark.parametrize("algorithm", EXPLODING.values(), ids=EXPLODING.keys())
def test_every_engine_stops_an_exploding_run_naming_the_step_size(algorithm):
    topology = {"graph": "directed_exponential", "mixing": "column_stochastic"} if algorithm["name"] == "push_sum" \
        else {}
    cfg = tiny_config(algorithm=algorithm, topology=topology, num_rounds=30)
    with pytest.raises(Diverged, match=r"training diverged at round \d+: .*lower algorithm\.") as err:
        simulate(build(cfg))
    key = "outer_lr" if "outer_lr" in algorithm else "lr"
    assert f"algorithm.{key}" in str(err.value)


def test_the_rule_can_be_turned_off_and_then_every_row_is_kept():
    cfg = tiny_config(algorithm=EXPLODING["fedavg"], num_rounds=10, divergence={"enabled": False})
    rows = simulate(build(cfg))
    assert [r["round"] for r in rows] == [0, 5, 10]
    assert not np.isfinite(rows[-1]["loss_mean"]) or rows[-1]["loss_mean"] > 1e4 * 2.3


def test_a_lower_factor_stops_a_run_the_default_lets_finish():
    """A healthy but noisy run (high step size, loss rises a little) finishes with the default factor and stops
    when the user asks for a tight one: the factor is what decides."""
    algo = {"name": "dsgd", "lr": 3.0}
    rows = simulate(build(tiny_config(algorithm=algo, num_rounds=10)))
    assert len(rows) == 3
    peak = max(r["loss_mean"] for r in rows[1:])
    with pytest.raises(Diverged, match="divergence.factor = 1.01"):
        simulate(build(tiny_config(algorithm=algo, num_rounds=10, divergence={"factor": 1.01})))
    assert peak > 2.3 * 1.01  # the stopped run's loss did pass 1.01x its initial value


def test_runs_under_attack_are_not_stopped():
    """Under attack the ruin of the honest nodes is the result: the attacked run ends with its rows."""
    cfg = tiny_config(num_rounds=10, threat={"attack": "gaussian", "num_byzantine": 4, "sigma": 1e8})
    rows = simulate(build(cfg))
    assert rows[-1]["round"] == 10


def test_the_consensus_distance_rule_against_the_initial_norm():
    cfg = tiny_config()
    import torch

    params = torch.ones(4, 3)  # rms norm sqrt(3)
    watch = DivergenceWatch(cfg, params)
    watch.row(5, params, (1e4 * 3 ** 0.5 * 0.99) ** 2)  # just under factor x norm: fine
    with pytest.raises(Diverged, match="distance from their average"):
        watch.row(10, params, (1e4 * 3 ** 0.5 * 1.01) ** 2)
    with pytest.raises(Diverged, match="non-finite"):
        nan = torch.full((4, 3), float("nan"))
        DivergenceWatch(cfg, params).row(1, nan, consensus_distance(nan))  # the row's distance, from these models
    zero = DivergenceWatch(cfg, torch.zeros(4, 3))  # models that start at zero: the first spread is the scale
    zero.row(1, params, 1e-6)
    with pytest.raises(Diverged):
        zero.row(2, params, 1e-6 * 1.01e8)


def test_large_features_point_at_the_data():
    cfg = tiny_config()
    watch = DivergenceWatch(cfg, None, feature_scale=5e4)
    watch.first_loss = 1.0
    with pytest.raises(Diverged, match=r"features reach \|x\| = 5e\+04: standardise them"):
        watch.step(3, 1e5)


def test_the_cli_keeps_the_rows_and_says_diverged(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("num_nodes: 8\nnum_rounds: 20\neval_every: 1\nalgorithm: {name: fedavg, lr: 1.0e+6, "
                      "fraction: 0.5}\nmodel: {name: mlp, hidden: [8]}\n")
    code = cli.main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training diverged at round" in err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"
    assert (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1].startswith("0,")


def test_a_resumed_run_keeps_the_reference_of_the_first_part(tmp_path, monkeypatch):
    """The watch's state is in the checkpoint: resuming does not re-reference the loss to a later value."""
    from tests.conftest import interrupt_after

    config = tmp_path / "c.yaml"
    config.write_text("num_nodes: 8\nnum_rounds: 6\neval_every: 2\nmodel: {name: mlp, hidden: [8]}\n"
                      "algorithm: {name: dsgd, lr: 0.1, batch_size: 8}\n")
    interrupt_after(monkeypatch, 2)
    assert cli.main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 130
    from peerlearn.report import snapshot_io

    saved = snapshot_io.load(tmp_path / "run" / "checkpoint.pt")
    assert saved["divergence"]["first_loss"] == pytest.approx(2.3, rel=0.2)
