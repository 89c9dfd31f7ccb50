"""Issue 37's parity battery: every synchronous algorithm x {no threat, a model attack with a robust
aggregator, a data attack, crash + link loss, privacy noise, a compressor, server rounds, the final merge},
each combination the algorithm
supports (its config validates), run on 2 real ranks (gloo on 127.0.0.1) and in the simulator with the same
seed: the same rows (wall time aside; all-reduces sum in another order, so floats agree to rel 1e-4).
A subset also on 4 ranks (slow tier). The ranks run every case in one pair of processes (one start-up),
each case on a fresh membership; every process is bounded by a timeout and joined."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch.multiprocessing as mp

from peerlearn.algorithms.base import ALGORITHMS
from peerlearn.engines.run import TIMINGS

pytestmark = pytest.mark.integration  # real ranks in separate processes

TIMEOUT_S = 300
BASE = {"seed": 0, "num_nodes": 8, "num_rounds": 6, "eval_every": 3, "topology": {"graph": "ring"},
        "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 1.0}, "model": {"name": "mlp", "hidden": [8]}}
CAPABILITIES = {
    "plain": {"eval_train": 100},  # no threat or fault; the generalization columns (one evaluator for every engine)
    "model-attack": {"threat": {"num_byzantine": 2, "attack": "gaussian", "sigma": 1.0},
                     "algorithm": {"aggregator": "trimmed_mean", "f": 1}},
    "data-attack": {"threat": {"num_byzantine": 2, "attack": "label_flip"}},
    "update-attack": {"threat": {"num_byzantine": 2, "attack": "alie", "space": "update"}},
    "crash-link-loss": {"faults": {"crash_fraction": 0.25, "crash_round": 2, "recover_round": 4, "link_failure": 0.2}},
    "privacy": {"privacy": {"clip": 1.0, "noise_multiplier": 0.5, "pairwise_multiplier": 0.5}},
    "privacy-rqm": {"privacy": {"clip": 0.1, "mechanism": "rqm", "rqm_levels": 2, "rqm_keep": 0.1, "rqm_range": 8.0}},
    "compressor": {"algorithm": {"compressor": "top_k", "compress_ratio": 0.3}},
    "quantized-ring": {"algorithm": {"compressor": "int8", "reduce": "ring"}},
    "server-rounds": {"algorithm": {"server_period": 2, "server_fraction": 0.5, "server_broadcast": "all"}},
    "final-merge": {"algorithm": {"final_merge": True}},
}
HYPER = {"fedavg": {"fraction": 0.5}, "fedprox": {"fraction": 0.5}, "modest": {"sample_size": 4, "num_aggregators": 2},
         "anarchic": {"variant": "cs", "participation_min": 0.3, "participation_max": 0.9, "steps_min": 1,
                      "num_local_steps": 2},
         "diloco": {"num_local_steps": 2}, "spsa": {"spsa_perturbations": 2}, "choco": {"consensus_lr": 0.3},
         # two heads: the most-confident teacher (a gather) and the heads' report (a node-weighted mean over ranks)
         "distillation": {"heads": 2, "public_samples": 64, "public_batch": 16}}
# personalized algorithms that so far run on the simulator only (their all-to-all evaluation and cluster all-reduces
# are not written for rank-local rows yet), and DADAO, which plays its events one at a time; the distributed engine
# refuses them in one line
SIMULATOR_ONLY = {"scool", "experts", "dadao"}
SYNCHRONOUS = [name for name, spec in ALGORITHMS.items()
               if not spec.capabilities.asynchronous and "distributed" in spec.capabilities.engines]


def _case(algorithm: str, capability: str) -> dict | None:
    """The config of one cell, or None when the algorithm does not support the capability (its config is refused)."""
    from peerlearn.config import ConfigError, parse_config

    extra = CAPABILITIES[capability]
    cfg = {**BASE, "name": f"{algorithm}-{capability}", **{k: v for k, v in extra.items() if k != "algorithm"},
           "algorithm": {"name": algorithm, "lr": 0.1, "batch_size": 8, **HYPER.get(algorithm, {}),
                         **extra.get("algorithm", {})}}
    try:
        parse_config(cfg)
    except ConfigError:
        return None
    return cfg


def _cells() -> list[dict]:
    return [cfg for name in SYNCHRONOUS for capability in CAPABILITIES if (cfg := _case(name, capability)) is not None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(rank: int, world: int, port: int, cases: list[dict], out: str) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    from peerlearn.build import build
    from peerlearn.config import parse_config
    from peerlearn.engines.distributed import simulate_distributed
    from peerlearn.engines.membership import Membership

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, datetime.timedelta(seconds=60))
    for i, case in enumerate(cases):
        built = build(parse_config(case))
        membership = Membership(store, rank, world, timeout_s=60, prefix=f"case{i}")
        try:
            rows = simulate_distributed(built, membership)
        finally:
            membership.close()
        if rank == 0:
            with open(os.path.join(out, f"{case['name']}.json"), "w") as f:
                json.dump(rows, f)


def _run_ranks(cases: list[dict], world: int, out) -> None:
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_ranks, args=(r, world, port, cases, str(out))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


def _assert_parity(cases: list[dict], out) -> None:
    from peerlearn.build import build
    from peerlearn.config import parse_config
    from peerlearn.engines import simulate

    for case in cases:
        sim = simulate(build(parse_config(case)))
        with open(out / f"{case['name']}.json") as f:
            ranks = json.load(f)
        assert [r["round"] for r in ranks] == [r["round"] for r in sim] == [0, 3, 6], case["name"]
        for d, s in zip(ranks, sim, strict=True):
            assert d.keys() == s.keys(), case["name"]
            for key in s.keys() - set(TIMINGS):
                a, b = float(d[key]), float(s[key])
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-4, abs=1e-6), \
                    (case["name"], s["round"], key, a, b)


def test_the_battery_covers_every_synchronous_algorithm_and_every_capability():
    """The matrix is not empty where it should not be: every algorithm runs plain, every capability runs
    somewhere, and what a capability needs (a model attack: an attackable algorithm) decides the rest."""
    cells = {c["name"] for c in _cells()}
    assert {f"{name}-plain" for name in SYNCHRONOUS} <= cells
    elsewhere = {n for n, spec in ALGORITHMS.items()
                 if not spec.capabilities.asynchronous and "distributed" not in spec.capabilities.engines}
    assert elsewhere == SIMULATOR_ONLY  # a new simulator-only algorithm is a decision, named here
    for capability in CAPABILITIES:
        assert any(c.endswith(f"-{capability}") for c in cells), capability
    attackable = {n for n, spec in ALGORITHMS.items() if n in SYNCHRONOUS and spec.capabilities.attackable}
    assert {c.removesuffix("-model-attack") for c in cells if c.endswith("-model-attack")} == attackable


def test_two_ranks_give_the_simulators_rows_for_every_supported_cell(tmp_path):
    cases = _cells()
    _run_ranks(cases, 2, tmp_path)
    _assert_parity(cases, tmp_path)


@pytest.mark.slow
def test_four_ranks_give_the_simulators_rows_on_a_subset(tmp_path):
    """Uneven and small blocks (8 nodes on 4 ranks: 2 each, every ring link crosses ranks): a gossip, a
    server and a compressed algorithm, plain and under faults."""
    cases = [c for c in _cells() if c["name"] in {"dsgd-model-attack", "dsgd-crash-link-loss", "fedavg-crash-link-loss",
                                                  "choco-compressor", "diloco-compressor", "gradient_tracking-plain"}]
    assert len(cases) == 6
    _run_ranks(cases, 4, tmp_path)
    _assert_parity(cases, tmp_path)
