"""The distributed engine on real gloo process groups over 127.0.0.1: its Comm against SimComm, and whole
runs (torchrun, 4 ranks) against the simulator. Every process is bounded by a timeout and joined."""

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

TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _primitives(rank, world, port, out):
    import datetime

    from peerlearn.engines.distributed import DistComm, node_blocks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        n = 11  # blocks of 3, 3, 3, 2 nodes: uneven on purpose
        rows = node_blocks(n, world)[rank]
        x = torch.randn(n, 6, generator=torch.Generator().manual_seed(0))
        W = metropolis_hastings_weights(barabasi_albert_graph(n, 2, seed=1))
        comm = DistComm(rows, n)
        comm.set_topology(W)
        got = {"mix": comm.mix(x[rows]), "gather": comm.gather(x[rows]), "mean": comm.all_reduce_mean(x[rows]),
               "weighted": comm.all_reduce_mean(x[rows], weights_N=torch.arange(1.0, n + 1)[rows]),
               "all_gather": comm.all_gather(x[rows], message_bytes=3)[0]}
        comm.set_topology(column_stochastic_weights(directed_exponential_graph(n)))
        got["push"] = comm.push(x[rows])
        got["bytes"] = comm.bytes_sent_N
        torch.save(got, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


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


def _torchrun(config: Path, out: Path, world: int = 4):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
           "-m", "peerlearn", "run", str(config), "--engine", "distributed", "--out", str(out), "--quiet"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def _rows(path: Path):
    with open(path / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in csv.DictReader(f)]


@pytest.mark.parametrize("algorithm, graph", [
    ({"name": "dsgd", "momentum": 0.5}, "torus"),
    pytest.param({"name": "dsgd", "aggregator": "trimmed_mean", "f": 1}, "torus", marks=pytest.mark.slow),
    ({"name": "diloco", "num_local_steps": 3}, "ring"),
    pytest.param({"name": "choco", "compressor": "top_k", "compress_ratio": 0.1, "consensus_lr": 0.3}, "ring",
                 marks=pytest.mark.slow),
], ids=["dsgd", "trimmed-mean", "diloco", "choco"])
def test_four_ranks_reproduce_the_simulator(tmp_path, algorithm, graph):
    """The quickstart shrunk to 16 nodes, 4 per rank: the same metrics as the simulator, same seed."""
    config = tmp_path / "q.yaml"
    config.write_text(yaml.safe_dump({
        "name": "q", "seed": 0, "num_nodes": 16, "num_rounds": 12, "eval_every": 4,
        "topology": {"graph": graph}, "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 1.0},
        "model": {"name": "mlp", "hidden": [16]}, "algorithm": {"lr": 0.1, "batch_size": 8, **algorithm}}))
    done = _torchrun(config, tmp_path / "dist")
    assert done.returncode == 0, done.stderr[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "peerlearn", "run", str(config), "--out", str(tmp_path / "sim"), "--quiet"],
                   env=env, check=True, timeout=TIMEOUT_S)
    dist_rows, sim_rows = _rows(tmp_path / "dist"), _rows(tmp_path / "sim")
    assert [r["round"] for r in dist_rows] == ["0", "4", "8", "12"]
    for d, s in zip(dist_rows, sim_rows, strict=True):
        for key in s:
            if s[key] != d[key]:  # only float rounding may differ (all-reduce summation order)
                assert float(d[key]) == pytest.approx(float(s[key]), rel=1e-4, abs=1e-6), key
    logs = sorted(p.name for p in (tmp_path / "dist" / "logs").iterdir())
    assert logs == ["rank0.log", "rank1.log", "rank2.log", "rank3.log"]


def test_unsupported_configs_fail_on_every_rank_with_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"num_nodes": 8, "num_rounds": 2, "algorithm": {"name": "fedavg"}}))
    done = _torchrun(config, tmp_path / "out", world=2)
    assert done.returncode != 0
    assert "config error: algorithm.name: the distributed engine runs" in done.stderr


def test_without_torchrun_the_engine_says_how_to_launch(tmp_path):
    config = tmp_path / "q.yaml"
    config.write_text(yaml.safe_dump({"num_nodes": 8, "num_rounds": 2}))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    done = subprocess.run([sys.executable, "-m", "peerlearn", "run", str(config), "--engine", "distributed"],
                          env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 2 and "launch with torchrun" in done.stderr
