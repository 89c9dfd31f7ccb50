"""A swarm across two hosts on one machine: two network namespaces joined by a veth pair (the fixture of
``test_multihost``), one peer in each, each started by hand with ``peerlearn peer`` and the swarm's secret,
listening on its namespace's own address: the run completes with the simulator's metrics (issue 40).
Skipped, with the reason, where namespaces cannot be created."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hivemind")

from tests.distributed.test_multihost import SECRET, TIMEOUT_S, _config, _rows, _start, _wait_all, hosts  # noqa: E402,F401

pytestmark = pytest.mark.integration


def test_two_peers_on_two_hosts_reproduce_the_simulator(hosts, tmp_path):  # noqa: F811
    config = _config(tmp_path)
    (ns0, ip0), (ns1, ip1) = hosts
    env = {"PEERLEARN_SECRET": SECRET}

    def peer(i: int, ns: str, ip: str, *join: str):
        argv = [sys.executable, "-m", "peerlearn", "peer", str(config), "--peer", f"{i}/2", "--host-maddr",
                f"/ip4/{ip}/tcp/0", "--out", str(tmp_path / f"peer{i}"), "--quiet", "--timeout-s", "20", *join]
        return _start(ns, argv, env, tmp_path / f"peer{i}.log")

    procs = [peer(0, ns0, ip0)]
    try:
        card = tmp_path / "peer0" / "peer.json"
        deadline = time.monotonic() + 60
        while not card.is_file() and time.monotonic() < deadline and procs[0].poll() is None:
            time.sleep(0.1)
        maddrs = [m for m in json.loads(card.read_text())["maddrs"] if f"/ip4/{ip0}/" in m]
        assert maddrs, card.read_text()  # it listens on its host's address, not only on loopback
        procs.append(peer(1, ns1, ip1, *[a for m in maddrs for a in ("--join", m)]))
    finally:
        codes = _wait_all(procs)
    logs = "\n".join((tmp_path / f"peer{i}.log").read_text()[-2000:] for i in range(len(procs)))
    assert codes == [0, 0], logs
    assert "Traceback" not in logs
    subprocess.run([sys.executable, "-m", "peerlearn", "run", str(config), "--out", str(tmp_path / "sim"), "--quiet"],
                   check=True, timeout=TIMEOUT_S)
    sim, peers = _rows(tmp_path / "sim"), [_rows(tmp_path / f"peer{i}") for i in range(2)]
    assert [int(r["round"]) for r in peers[0]] == [int(r["round"]) for r in sim]
    for k, row in enumerate(sim):
        assert np.mean([float(p[k]["acc_mean"]) for p in peers]) == pytest.approx(float(row["acc_mean"]), abs=1e-6)
    assert all(int(p[-1]["dropped_messages"]) == 0 and int(p[-1]["peers_seen"]) == 2 for p in peers)
