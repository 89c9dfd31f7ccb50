"""A real multi-host run on one machine: two network namespaces joined by a veth pair, each with its own
address and no other network, one rank per namespace (issue 19).

* the documented multi-machine form (each rank started by hand with the shared secret) reproduces the
  simulator's metrics across the namespaces, while outsiders with a wrong secret or none are refused
  (issue 36);
* the rank in one namespace is killed mid-run and the other finishes the run, with the simulator's
  metrics for those nodes crashing at that round.

Skipped, with the reason, where namespaces cannot be created (not root, no ``ip``, no netns support).
Every process runs under a timeout inside its namespace and is killed at the end; the namespaces are
deleted.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peerlearn.engines.run import TIMINGS

pytestmark = pytest.mark.integration  # real ranks in network namespaces

TIMEOUT_S = 150
SUBNET = "10.231.7"  # only inside the namespaces: nothing on the host's own network changes


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def hosts():
    """Two namespaces ``(name, address)`` joined by a veth pair; deleted afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("multi-host test: the `ip` tool (iproute2) is not installed")
    if os.geteuid() != 0:
        pytest.skip("multi-host test: creating network namespaces needs root")
    names = [f"peerlearn{os.getpid()}{h}" for h in "ab"]
    made = []
    try:
        for name in names:
            done = _ip("netns", "add", name)
            if done.returncode:
                pytest.skip(f"multi-host test: cannot create a network namespace: {done.stderr.strip()}")
            made.append(name)
        steps = [("-n", names[0], "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", names[1])]
        for name, dev, host in ((names[0], "va", 1), (names[1], "vb", 2)):
            steps += [("-n", name, "addr", "add", f"{SUBNET}.{host}/24", "dev", dev),
                      ("-n", name, "link", "set", dev, "up"), ("-n", name, "link", "set", "lo", "up")]
        for step in steps:
            done = _ip(*step)
            if done.returncode:
                pytest.skip(f"multi-host test: cannot join the namespaces (ip {' '.join(step)}): "
                            f"{done.stderr.strip()}")
        yield [(names[0], f"{SUBNET}.1"), (names[1], f"{SUBNET}.2")]
    finally:
        for name in made:
            _ip("netns", "del", name)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump({
        "name": "q", "seed": 0, "num_nodes": 8, "num_rounds": 12, "eval_every": 4, "topology": {"graph": "ring"},
        "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 1.0}, "model": {"name": "mlp", "hidden": [16]},
        "algorithm": {"name": "dsgd", "lr": 0.1, "batch_size": 8, "momentum": 0.5}}))
    return path


def _start(ns: str, argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    """``argv`` inside namespace ``ns``, bounded by ``timeout``, in its own process group."""
    cmd = ["ip", "netns", "exec", ns, "timeout", "-k", "5", str(TIMEOUT_S), *argv]
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_all(procs: list[subprocess.Popen]) -> list[int]:
    try:
        return [p.wait(TIMEOUT_S + 15) for p in procs]
    finally:
        for p in procs:  # never leave a rank or an agent behind, even when the test fails
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _assert_rows_match(dist_rows: list[dict], sim_rows: list[dict], skip=lambda key, round_: False) -> None:
    assert [int(r["round"]) for r in dist_rows] == [int(r["round"]) for r in sim_rows]
    for d, s in zip(dist_rows, sim_rows, strict=True):
        for key, value in s.items():
            if key in TIMINGS or skip(key, int(float(s["round"]))):
                continue
            assert float(d[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-6, nan_ok=True), (s["round"], key)


SECRET = "multihost-test-secret-0123456789"


def _rank_argv(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "peerlearn", "run", str(config), "--engine", "distributed", "--out", str(out),
            "--quiet", *extra]


def test_two_hosts_with_the_secret_reproduce_the_simulator_and_outsiders_are_refused(hosts, tmp_path):
    """Issue 36's acceptance: one rank per namespace, started by hand with the shared secret, reproduces the
    simulator; two outsiders on the second host (a wrong secret, and none) try to join as rank 1 before the
    real rank 1 does: each is refused with one line, rank 0 names each refused join in one line, and the run
    finishes with the simulator's metrics."""
    config, out = _config(tmp_path), tmp_path / "dist"
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": hosts[0][1], "MASTER_PORT": "29411"}
    (ns0, _), (ns1, _) = hosts
    rank0 = _start(ns0, _rank_argv(config, out, "--timeout-s", "20"), {**env, "RANK": "0", "PEERLEARN_SECRET": SECRET},
                   tmp_path / "rank0.log")
    procs = [rank0]
    try:
        outsiders = [_start(ns1, _rank_argv(config, out), {**env, "RANK": "1", "PEERLEARN_SECRET": "x" * 32},
                            tmp_path / "wrong.log"),
                     _start(ns1, _rank_argv(config, out, "--insecure"), {**env, "RANK": "1"}, tmp_path / "none.log")]
        procs += outsiders
        assert [p.wait(TIMEOUT_S) for p in outsiders] == [1, 1]
        procs.append(_start(ns1, _rank_argv(config, out, "--timeout-s", "20"),
                            {**env, "RANK": "1", "PEERLEARN_SECRET": SECRET}, tmp_path / "rank1.log"))
    finally:
        codes = _wait_all(procs)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("rank0", "rank1", "wrong", "none")}
    assert codes == [0, 1, 1, 0], logs
    # the last line (torch may warn before it that a namespace has no host name for its address)
    assert logs["wrong"].strip().splitlines()[-1] == (
        "error: rank 1: rank 0 refused this rank: its proof of the secret is wrong (another PEERLEARN_SECRET, or a "
        "forged request) (its challenge was not signed with this rank's secret either)"), logs["wrong"]
    assert logs["none"].strip().splitlines()[-1] == (
        "error: rank 1: rank 0 refused this rank: it presented no proof of the run's secret (started without it, "
        "or with --insecure)"), logs["none"]
    refused = [line for line in logs["rank0"].splitlines() if "refused a join" in line]
    assert len(refused) == 2, logs["rank0"]
    assert sorted("wrong" if "proof of the secret is wrong" in line else "none" if "presented no proof" in line
                  else line for line in refused) == ["none", "wrong"], refused
    assert all(line.startswith("rank 0: refused a join as rank 1 (host ") for line in refused), refused
    assert "Traceback" not in "".join(logs.values()), logs
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    subprocess.run([sys.executable, "-m", "peerlearn", "run", str(config), "--out", str(tmp_path / "sim"), "--quiet"],
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, timeout=TIMEOUT_S)
    _assert_rows_match(_rows(out), _rows(tmp_path / "sim"))
    ranks = sorted((out / "logs").iterdir())
    assert [p.name for p in ranks] == ["rank0.log", "rank1.log"]
    assert all("finished 12 rounds" in p.read_text() for p in ranks)
    assert (out / "logs" / "rank0.log").read_text().count("refused a join") == 2  # and in rank 0's log


def test_killing_the_rank_on_one_host_leaves_the_other_training(hosts, tmp_path):
    """Each rank started by hand (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` of the first host): the rank on
    the second host SIGKILLs itself as round 5 starts; the first finishes the run, and its metrics are the
    simulator's with nodes 4..7 crashing at round 5."""
    from peerlearn.build import build
    from peerlearn.config import load_config
    from peerlearn.engines import simulate
    from peerlearn.world.faults import FaultPlan

    config, out = _config(tmp_path), tmp_path / "dist"
    procs = []
    for rank, (ns, _) in enumerate(hosts):
        env = {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": hosts[0][1], "MASTER_PORT": "29410",
               "PEERLEARN_KILL": "1:5", "PEERLEARN_SECRET": SECRET}
        argv = [sys.executable, "-m", "peerlearn", "run", str(config), "--engine", "distributed", "--out", str(out),
                "--quiet", "--timeout-s", "3"]
        procs.append(_start(ns, argv, env, tmp_path / f"host{rank}.log"))
    codes = _wait_all(procs)
    logs = "\n".join((tmp_path / f"host{i}.log").read_text()[-2000:] for i in range(2))
    assert codes == [0, -signal.SIGKILL], logs
    assert "Traceback" not in logs, logs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    log0 = (out / "logs" / "rank0.log").read_text()
    assert "ranks [1] left (nodes 4..7); 1 ranks go on from round 5" in log0

    cfg = load_config(str(config))
    alive_TN = (torch.arange(13)[:, None] < torch.tensor([13] * 4 + [5] * 4)[None, :]).numpy()
    sim_rows = simulate(build(cfg)._replace(faults=FaultPlan(alive_TN, cfg.topology.mixing.build())))
    dist_rows = _rows(out)
    assert [int(r["alive_nodes"]) for r in dist_rows] == [8, 8, 4, 4]
    # the loss of a round with down nodes is averaged over the alive ones here and over all in the simulator
    _assert_rows_match(dist_rows, [{k: str(v) for k, v in r.items()} for r in sim_rows],
                       skip=lambda key, round_: key == "loss_mean" and round_ > 4)
