"""Churn scenarios for the p2p engine (issue 40): the file is checked before any peer starts, one line
naming the field; the swarm runs them in tests/distributed/test_p2p.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peerlearn.engines.p2p.churn import Churn, load_churn
from peerlearn.spec import ConfigError


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "churn.yaml"
    path.write_text(text)
    return str(path)


def test_a_scenario_gives_each_peer_its_events(tmp_path):
    churn = load_churn(_file(tmp_path, "events:\n  - {peer: 4, round: 20, event: join}\n"
                                       "  - {peer: 4, round: 60, event: leave}\n"
                                       "  - {peer: 2, round: 80, event: crash}\n"), 5, 100, asynchronous=True)
    assert churn.of(4) == {"join": 20, "leave": 60} and churn.of(2) == {"crash": 80} and churn.of(0) == {}
    assert churn.joiners == {4}
    assert load_churn(None, 5, 100, True) == Churn() and load_churn(_file(tmp_path, ""), 5, 100, True) == Churn()


@pytest.mark.parametrize("events, asynchronous, says", [
    ("{peer: 5, round: 3, event: leave}", True, "events.0.peer: the swarm has peers 0..4"),
    ("{peer: 1, round: 100, event: leave}", True, "events.0.round: an event must come before the last round"),
    ("{peer: 1, round: 0, event: leave}", True, "events.0.round"),
    ("{peer: 1, round: 3, event: vanish}", True, "events.0.event"),
    ("{peer: 1, round: 3, event: leave, when: 2}", True, "events.0.when"),
    ("{peer: 1, round: 3, event: join}", False, "events.0.event: a peer joins a running swarm under asynchronous"),
    ("{peer: 0, round: 3, event: join}", True, "events.0.peer: peer 0 starts the swarm"),
    ("{peer: 1, round: 3, event: leave}, {peer: 1, round: 5, event: crash}", True, "events.1.event: peer 1 already"),
    ("{peer: 1, round: 9, event: join}, {peer: 1, round: 5, event: leave}", True, "peer 1 leaves or crashes before"),
])
def test_a_bad_scenario_is_one_error_naming_the_field(tmp_path, events, asynchronous, says):
    with pytest.raises(ConfigError, match="--churn") as err:
        load_churn(_file(tmp_path, f"events: [{events}]\n"), 5, 100, asynchronous)
    assert says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.integration  # starts the command in a process
def test_the_command_refuses_a_bad_scenario_before_any_peer(tmp_path):
    cfg = yaml.safe_load(Path("configs/quickstart.yaml").read_text())
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    churn = _file(tmp_path, "events: [{peer: 1, round: 3, event: join}]\n")  # D-SGD is synchronous
    done = subprocess.run([sys.executable, "-m", "peerlearn", "run", str(tmp_path / "c.yaml"), "--engine", "p2p",
                           "--nproc", "4", "--churn", churn, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--churn: events.0.event" in done.stderr and not (tmp_path / "out").exists()
