"""The distributed engine on real gloo process groups over 127.0.0.1: its Comm against SimComm, and whole
runs (--nproc 4) against the simulator. Every process is bounded by a timeout and joined."""

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from peerlearn.engines.comm import SimComm
from peerlearn.topology import barabasi_albert_graph, metropolis_hastings_weights
from peerlearn.topology.directed import column_stochastic_weights, directed_exponential_graph
from peerlearn.engines.run import TIMINGS
from tests.conftest import ctrl_c_as_in_a_terminal

pytestmark = pytest.mark.integration  # real ranks in separate processes

TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _primitives(rank, world, port, out):
    import datetime

    from peerlearn.engines.distributed import DistComm, node_blocks
    from peerlearn.engines.membership import Group

    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    n = 11  # blocks of 3, 3, 3, 2 nodes: uneven on purpose
    rows = node_blocks(n, world)[rank]
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(0))
    W = metropolis_hastings_weights(barabasi_albert_graph(n, 2, seed=1))
    comm = DistComm(node_blocks(n, world), Group(store, list(range(world)), rank, 60))
    comm.set_topology(W)
    got = {"mix": comm.mix(x[rows]), "gather": comm.gather(x[rows]), "mean": comm.all_reduce_mean(x[rows]),
           "weighted": comm.all_reduce_mean(x[rows], weights_N=torch.arange(1.0, n + 1)[rows]),
           "all_gather": comm.all_gather(x[rows], message_bytes=3)[0]}
    comm.set_topology(column_stochastic_weights(directed_exponential_graph(n)))
    got["push"] = comm.push(x[rows])
    got["bytes"] = comm.bytes_sent_N
    torch.save(got, os.path.join(out, f"rank{rank}.pt"))


def test_distcomm_primitives_equal_simcomm_on_uneven_blocks(tmp_path):
    world = 4
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_primitives, args=(r, world, port, str(tmp_path))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]

    from peerlearn.engines.distributed import node_blocks

    n = 11
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(0))
    sim = SimComm(metropolis_hastings_weights(barabasi_albert_graph(n, 2, seed=1)))
    mixed, (received, valid) = sim.mix(x), sim.gather(x)
    mean, weighted = sim.all_reduce_mean(x), sim.all_reduce_mean(x, weights_N=torch.arange(1.0, n + 1))
    sim.all_gather(x, message_bytes=3)
    sim.set_topology(column_stochastic_weights(directed_exponential_graph(n)))
    pushed = sim.push(x)
    for rank, rows in enumerate(node_blocks(n, 4)):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["mix"], mixed[rows])  # the same arithmetic, bit for bit
        assert torch.equal(got["push"], pushed[rows])
        g_rows, g_valid = got["gather"]
        assert torch.equal(g_valid, valid[rows])
        assert torch.equal(g_rows[g_valid], received[rows][valid[rows]])  # padding aside, the same rows
        torch.testing.assert_close(got["mean"], mean)  # a different summation order: float tolerance
        torch.testing.assert_close(got["weighted"], weighted)
        assert torch.equal(got["all_gather"], x)
        torch.testing.assert_close(got["bytes"], sim.bytes_sent_N[rows])


SECRET = "test-secret-0123456789abcdef"


def _rows(path: Path):
    with open(path / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in csv.DictReader(f)]


@pytest.mark.parametrize("algorithm, graph", [
    # the CLI's --nproc 4 end to end (the slow tier); every algorithm and capability on ranks is the parity
    # battery's (tests/distributed/test_parity.py), in-process and much cheaper
    pytest.param({"name": "diloco", "num_local_steps": 3}, "ring", marks=pytest.mark.slow),
], ids=["diloco"])
def test_four_ranks_reproduce_the_simulator(tmp_path, algorithm, graph):
    """The quickstart shrunk to 16 nodes, 4 per rank: the same metrics as the simulator, same seed."""
    config = tmp_path / "q.yaml"
    config.write_text(yaml.safe_dump({
        "name": "q", "seed": 0, "num_nodes": 16, "num_rounds": 12, "eval_every": 4,
        "topology": {"graph": graph}, "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 1.0},
        "model": {"name": "mlp", "hidden": [16]}, "algorithm": {"lr": 0.1, "batch_size": 8, **algorithm}}))
    code, _, err = _finish(_launch(config, tmp_path / "dist"), TIMEOUT_S)
    assert code == 0, err[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "peerlearn", "run", str(config), "--out", str(tmp_path / "sim"), "--quiet"],
                   env=env, check=True, timeout=TIMEOUT_S)
    _assert_same_rows(_rows(tmp_path / "dist"), _rows(tmp_path / "sim"))
    logs = sorted(p.name for p in (tmp_path / "dist" / "logs").iterdir())
    assert logs == ["rank0.log", "rank1.log", "rank2.log", "rank3.log"]


def _assert_same_rows(dist_rows: list[dict], sim_rows: list[dict]) -> None:
    assert [r["round"] for r in dist_rows] == ["0", "4", "8", "12"]
    for d, s in zip(dist_rows, sim_rows, strict=True):
        assert d.keys() == s.keys()
        for key in s:
            if s[key] != d[key]:  # only float rounding may differ (all-reduce summation order)
                assert float(d[key]) == pytest.approx(float(s[key]), rel=1e-4, abs=1e-6, nan_ok=True), key


@pytest.mark.parametrize("threat, algorithm", [
    ({"attack": "gaussian", "sigma": 1.0}, {"aggregator": "trimmed_mean", "f": 1}),
    pytest.param({"attack": "alie", "z": "auto"}, {}, marks=pytest.mark.slow),
    pytest.param({"attack": "label_flip"}, {}, marks=pytest.mark.slow),
], ids=["gaussian-trimmed-mean", "alie", "label-flip"])
def test_two_ranks_under_attack_give_the_simulators_rows(tmp_path, threat, algorithm):
    """Issue 37's parity for threats: model attacks (with a robust aggregator, or plain gossip) and a data
    attack on 2 real ranks give the simulator's rows, attack_success included; 2 of 8 nodes are Byzantine."""
    config = _config(tmp_path, num_nodes=8, threat={"num_byzantine": 2, **threat},
                     algorithm={"name": "dsgd", "lr": 0.1, "batch_size": 8, **algorithm})
    code, out, err = _finish(_launch(config, tmp_path / "dist", nproc=2, quiet=False), TIMEOUT_S)
    assert code == 0, err[-3000:]
    subprocess.run([sys.executable, "-m", "peerlearn", "run", str(config), "--out", str(tmp_path / "sim"), "--quiet"],
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, timeout=TIMEOUT_S)
    dist_rows, sim_rows = _rows(tmp_path / "dist"), _rows(tmp_path / "sim")
    _assert_same_rows(dist_rows, sim_rows)
    assert {r["alive_nodes"] for r in dist_rows} == {"6"}  # the honest nodes are evaluated, as in the simulator
    if threat["attack"] == "label_flip":
        assert all(r["attack_success"] != "nan" for r in dist_rows)
    # issue 38 (8): progress lines only for fresh rows, never a stale accuracy
    shown = [line for line in out.splitlines() if line.startswith("round ")]
    assert shown == [f"round {r['round']}/12: acc {float(r['acc_mean']):.3f}" for r in dist_rows[1:]], out


def test_two_ranks_with_faults_privacy_and_a_final_merge_give_the_simulators_rows(tmp_path):
    """Issue 37's parity for faults and privacy: crashed nodes that come back (copying a neighbour's model,
    possibly on the other rank), lost links and messages, DECOR noise with its accountant and the final
    all-reduce, on 2 real ranks: the simulator's rows, epsilon and alive_nodes included."""
    config = _config(tmp_path, num_nodes=8, faults={"crash_fraction": 0.25, "crash_round": 3, "recover_round": 6,
                                                    "link_failure": 0.2, "message_loss": 0.1},
                     privacy={"clip": 1.0, "noise_multiplier": 0.5, "pairwise_multiplier": 0.5},
                     algorithm={"name": "dsgd", "lr": 0.1, "batch_size": 8, "final_merge": True})
    code, _, err = _finish(_launch(config, tmp_path / "dist", nproc=2), TIMEOUT_S)
    assert code == 0, err[-3000:]
    subprocess.run([sys.executable, "-m", "peerlearn", "run", str(config), "--out", str(tmp_path / "sim"), "--quiet"],
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, timeout=TIMEOUT_S)
    dist_rows, sim_rows = _rows(tmp_path / "dist"), _rows(tmp_path / "sim")
    _assert_same_rows(dist_rows, sim_rows)
    assert [r["alive_nodes"] for r in dist_rows] == ["8", "6", "8", "8"]  # down at round 4, back by round 8
    assert all(float(r["epsilon"]) > 0 for r in dist_rows[1:])
    assert float(dist_rows[-1]["consensus_distance"]) < 1e-6  # the final merge: one model everywhere


def test_a_distributed_run_resumes_on_ranks_or_in_the_simulator_with_the_same_rows(tmp_path):
    """Issue 37: rank 0 dies at round 7 (the checkpoint of round 4 stays); `--resume` on 2 ranks, and the same
    folder resumed by the simulator, both finish with the uninterrupted simulator's rows (momentum, privacy
    noise and the accountant carried over)."""
    import shutil

    config = _config(tmp_path, num_nodes=8, privacy={"clip": 1.0, "noise_multiplier": 0.5})
    code, _, err = _finish(_launch(config, tmp_path / "dist", "--timeout-s", "3", kill="0:7", nproc=2), TIMEOUT_S)
    assert code == 1 and "left at round 7" in err, err[-3000:]
    shutil.copytree(tmp_path / "dist", tmp_path / "sim-resumed")
    code, _, err = _finish(_launch(None, None, "--resume", str(tmp_path / "dist"), nproc=2), TIMEOUT_S)
    assert code == 0, err[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "peerlearn", "run", "--resume", str(tmp_path / "sim-resumed"), "--quiet"],
                   env=env, check=True, timeout=TIMEOUT_S)
    subprocess.run([sys.executable, "-m", "peerlearn", "run", str(config), "--out", str(tmp_path / "sim"), "--quiet"],
                   env=env, check=True, timeout=TIMEOUT_S)
    sim_rows = _rows(tmp_path / "sim")
    _assert_same_rows(_rows(tmp_path / "dist"), sim_rows)
    _assert_same_rows(_rows(tmp_path / "sim-resumed"), sim_rows)
    assert (tmp_path / "dist" / "logs" / "rank0.log").read_text().count("rank 0/2, pid") == 2  # the log goes on


def _by_hand(config: Path, out: Path, world: int, *extra: str, ranks=None, port: int | None = None, **env) -> list:
    """The ``ranks`` (default: all) started by hand, without a launcher: RANK, WORLD_SIZE, MASTER_ADDR/PORT and
    the shared secret in their environment."""
    port = port or _free_port()
    return [subprocess.Popen([sys.executable, "-m", "peerlearn", "run", str(config), "--engine", "distributed",
                              "--out", str(out), "--quiet", *extra],
                             env={**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "WORLD_SIZE": str(world),
                                  "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PEERLEARN_SECRET": SECRET,
                                  **env},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
            for rank in (range(world) if ranks is None else ranks)]


def test_unsupported_configs_fail_on_every_rank_with_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"num_nodes": 8, "num_rounds": 2, "algorithm": {"name": "async_push_sum"}}))
    results = [_finish(p, TIMEOUT_S) for p in _by_hand(config, tmp_path / "out", 2)]
    for code, _, err in results:
        assert code == 2 and err.count("\n") == 1, err
        assert "config error: algorithm.name: async_push_sum is asynchronous: on real processes it needs the " \
               "peer-to-peer engine" in err, err


def test_torchrun_is_warned_against(monkeypatch):
    """torchrun still starts ranks, but its elastic rendezvous unpickles what its store holds (C1)."""
    from peerlearn.engines.distributed import elastic_warning

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert elastic_warning() is None  # --nproc and launches by hand
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert "its elastic rendezvous unpickles what its store holds" in elastic_warning()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert elastic_warning() is None  # once per machine


def test_without_torchrun_the_engine_says_how_to_launch(tmp_path):
    config = tmp_path / "q.yaml"
    config.write_text(yaml.safe_dump({"num_nodes": 8, "num_rounds": 2}))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    done = subprocess.run([sys.executable, "-m", "peerlearn", "run", str(config), "--engine", "distributed"],
                          env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 2 and "launch with --nproc N (one machine), or start every rank by hand" in done.stderr


def _config(tmp_path: Path, **over) -> Path:
    """The quickstart shrunk to 16 nodes (4 per rank on 4 ranks)."""
    cfg = {"name": "q", "seed": 0, "num_nodes": 16, "num_rounds": 12, "eval_every": 4,
           "topology": {"graph": "torus"}, "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 1.0},
           "model": {"name": "mlp", "hidden": [16]},
           "algorithm": {"name": "dsgd", "lr": 0.1, "batch_size": 8, "momentum": 0.5}, **over}
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(config: Path | None, out: Path | None, *extra: str, kill: str | None = None, nproc: int = 4, quiet: bool = True,
            **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kill:
        env["PEERLEARN_KILL"] = kill
    where = [str(config), "--out", str(out)] if config is not None else []  # none: --resume DIR in extra
    cmd = [sys.executable, "-m", "peerlearn", "run", *where, "--engine", "distributed", "--nproc", str(nproc),
           *["--quiet"] * quiet, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=ctrl_c_as_in_a_terminal, **popen)


def _finish(proc, timeout: float):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # never leave a launch behind, even when the test fails
            os.killpg(proc.pid, 9)
            proc.communicate()
    return proc.returncode, out, err


@pytest.mark.parametrize("kill, departures, alive", [
    ("3:5", {3: 5}, [16, 16, 12, 12]),
    pytest.param("3:5,1:9", {3: 5, 1: 9}, [16, 16, 12, 8], marks=[pytest.mark.slow, pytest.mark.extended]),
], ids=["one-death", "two-deaths"])
def test_a_rank_that_dies_at_a_round_is_a_crash_in_the_simulator(tmp_path, kill, departures, alive):
    """Rank 3 kills itself (SIGKILL) as round 5 starts (and rank 1 as round 9 starts): the survivors
    agree on the last round all completed, go on without the dead rank's nodes, and produce the
    simulator's metrics for those nodes crashing at those rounds (same seed; the loss aside once a
    node is down, which the simulator averages over down nodes too)."""
    from peerlearn.config import load_config
    from peerlearn.build import build
    from peerlearn.engines.distributed import node_blocks
    from peerlearn.world.faults import FaultPlan
    from peerlearn.engines import simulate

    config = _config(tmp_path)
    code, _, err = _finish(_launch(config, tmp_path / "dist", "--timeout-s", "3", kill=kill), TIMEOUT_S)
    assert code == 0, err[-3000:]
    for rank in departures:
        assert f"rank {rank} was killed by SIGKILL" in err
    assert err.count("was killed by") == len(departures)  # the survivors ended cleanly (no abort at exit)

    cfg = load_config(str(config))
    built = build(cfg)
    gone_N = torch.full((16,), 13)
    for rank, round_ in departures.items():
        gone_N[node_blocks(16, 4)[rank]] = round_
    alive_TN = (torch.arange(13)[:, None] < gone_N[None, :]).numpy()
    sim_rows = simulate(built._replace(faults=FaultPlan(alive_TN, cfg.topology.mixing.build())))
    dist_rows = _rows(tmp_path / "dist")
    assert [int(r["round"]) for r in dist_rows] == [0, 4, 8, 12]
    assert [int(r["alive_nodes"]) for r in dist_rows] == alive
    for d, s in zip(dist_rows, sim_rows, strict=True):
        for key, value in s.items():
            if key in TIMINGS or (key == "loss_mean" and s["round"] > 4):
                continue
            assert float(d[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-6, nan_ok=True), (s["round"], key)
    log = (tmp_path / "dist" / "logs" / "rank2.log").read_text()
    assert "ranks [3] left (nodes 12..15); 3 ranks go on from round 5" in log
    if 1 in departures:
        assert "ranks [1] left (nodes 4..7); 2 ranks go on from round 9" in log


def test_when_rank_0_dies_the_others_stop_and_the_rows_stay(tmp_path):
    """Rank 0 evaluates and writes: without it the survivors stop with one line each, and the run
    directory keeps the rows written before."""
    code, _, err = _finish(_launch(_config(tmp_path), tmp_path / "run", "--timeout-s", "3", kill="0:5", nproc=2),
                           TIMEOUT_S)
    assert code == 1
    assert "rank 0 was killed by SIGKILL" in err
    assert err.count("which evaluates and writes the run, left at round 5") == 1
    assert [int(r["round"]) for r in _metrics_rows(tmp_path / "run")] == [0, 4]


@pytest.mark.slow  # waits out a liveness timeout
def test_sigkill_mid_run_leaves_the_others_training(tmp_path):
    """The acceptance test: 4 ranks on 127.0.0.1, one killed from outside with SIGKILL mid-run; the
    other three finish within the timeout plus a few seconds, the metrics show the departure, and no
    process is left behind."""
    import time

    timeout_s = 4.0
    config = _config(tmp_path, num_rounds=400, eval_every=20)
    out = tmp_path / "run"
    proc = _launch(config, out, "--timeout-s", str(timeout_s))
    try:
        deadline = time.monotonic() + TIMEOUT_S
        pids = {}
        while time.monotonic() < deadline and (len(pids) < 4 or len(_metrics_rows(out)) < 3):
            for r in range(4):
                log = out / "logs" / f"rank{r}.log"
                if r not in pids and log.exists() and "pid" in (text := log.read_text()):
                    pids[r] = int(text.split("pid ")[1].split(":")[0])
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        os.kill(pids[2], 9)
        killed_at = time.monotonic()
        code, _, err = _finish(proc, TIMEOUT_S)
        after_kill = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert code == 0, err[-3000:]
    assert err.count("was killed by") == 1, err[-3000:]  # only rank 2: the survivors ended cleanly
    rows = _metrics_rows(out)
    assert int(rows[-1]["round"]) == 400
    alive = [int(r["alive_nodes"]) for r in rows]
    assert alive[0] == 16 and alive[-1] == 12 and sorted(alive, reverse=True) == alive
    assert all(float(r["acc_alive_mean"]) > 0 for r in rows)
    # the survivors lost at most one timeout (plus re-forming the group) to the death
    run_s = float(rows[-1]["wall_time_s"])
    assert after_kill < run_s + timeout_s + 10
    for r in (0, 1, 3):
        assert "ranks [2] left (nodes 8..11)" in (out / "logs" / f"rank{r}.log").read_text()
    for pid in pids.values():  # every rank has ended (and was reaped by the launcher)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _metrics_rows(out: Path) -> list[dict]:
    path = out / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _wait_for_rows(proc, out: Path, count: int) -> None:
    import time

    deadline = time.monotonic() + TIMEOUT_S
    while len(_metrics_rows(out)) < count:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no rows in time"
        time.sleep(0.05)


def test_ctrl_c_stops_every_rank_with_one_line_each_and_keeps_the_rows(tmp_path):
    """Ctrl-C reaches the launcher and every rank (one process group, as in a terminal): exit 130, one line
    per rank saying where it stopped, summary.json says interrupted, the rows written so far stay."""
    import json
    import signal

    out = tmp_path / "run"
    proc = _launch(_config(tmp_path, num_rounds=100_000, eval_every=20), out, "--timeout-s", "5", nproc=2)
    try:
        _wait_for_rows(proc, out, 3)
        os.killpg(proc.pid, signal.SIGINT)
        code, _, err = _finish(proc, TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.count("rank 0: interrupted after round") == 1, err[-3000:]
    # issue 38 (8): one round for the run, rank 0's (the ranks may be a round apart); the others say they stopped
    assert err.count("rank 1: interrupted\n") == 1 and "rank 1: interrupted after" not in err, err[-3000:]
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert len(_metrics_rows(out)) >= 3


@pytest.mark.slow  # the divergence watch is covered in-process; this is its multi-rank acceptance
def test_divergence_stops_every_rank_and_keeps_the_rows(tmp_path):
    """The divergence rule on the distributed engine: the reduced loss is the same on every rank, so all stop
    at the same round; exit 1, one line, summary.json says diverged, the round-0 row stays."""
    import json

    config = _config(tmp_path, algorithm={"name": "dsgd", "lr": 1e6, "batch_size": 8})
    code, _, err = _finish(_launch(config, tmp_path / "run", "--timeout-s", "5"), TIMEOUT_S)
    assert code == 1, err[-3000:]
    assert err.count("training diverged at round") == 1 and len(err.strip().splitlines()) == 1, err[-3000:]
    assert "lower algorithm.lr" in err and "Traceback" not in err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"
    assert [r["round"] for r in _metrics_rows(tmp_path / "run")] == ["0"]


@pytest.mark.slow
def test_a_rank_stopped_longer_than_the_timeout_is_left_out_with_one_line(tmp_path):
    """SIGSTOP one rank past --timeout-s, then SIGCONT: the others go on without it, and it leaves with one
    line (no raw backend error), whether its next backend call or the store tells it first."""
    import signal
    import time

    timeout_s = 3.0
    out = tmp_path / "run"
    proc = _launch(_config(tmp_path, num_rounds=600, eval_every=20), out, "--timeout-s", str(timeout_s))
    try:
        _wait_for_rows(proc, out, 2)
        pid = int((out / "logs" / "rank3.log").read_text().split("pid ")[1].split(":")[0])
        os.kill(pid, signal.SIGSTOP)
        time.sleep(4 * timeout_s)
        os.kill(pid, signal.SIGCONT)
        code, _, err = _finish(proc, TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err and "RuntimeError" not in err, err[-3000:]
    assert "error: rank 3: rank 3 was left out of the run" in err, err[-3000:]
    rows = _metrics_rows(out)
    assert int(rows[-1]["round"]) == 600 and int(rows[-1]["alive_nodes"]) == 12


def test_a_rank_that_starts_late_is_waited_for_with_the_startup_timeout(tmp_path):
    """Ranks start seconds apart (a busy machine, a slow disk): forming the group waits up to
    --startup-timeout-s, not the short --timeout-s that every exchange after it gets."""
    import time

    config, port = _config(tmp_path, num_rounds=4), _free_port()
    procs = _by_hand(config, tmp_path / "run", 2, "--timeout-s", "1", ranks=[0], port=port)
    time.sleep(4)  # four timeouts before the second rank even starts
    procs += _by_hand(config, tmp_path / "run", 2, "--timeout-s", "1", ranks=[1], port=port)
    results = [_finish(p, TIMEOUT_S) for p in procs]
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    assert [int(r["round"]) for r in _metrics_rows(tmp_path / "run")] == [0, 4]
