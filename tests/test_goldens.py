"""Golden equivalence: short runs of every shipped config and of in-process cases (faults, threats,
privacy, compression, async, distributed) give the metrics recorded in ``tests/goldens/metrics.json``.

The goldens were recorded before the spec/registry redesign (issue 15); a refactor that keeps every
part's seed stream keeps every number. ``wall_time_s`` and ``eval_time_s`` are the only columns left out.

Record again (only for a change that is *meant* to change numbers, and say so in the commit):
``python -m tests.test_goldens``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peerlearn.engines.run import TIMINGS

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = Path(__file__).parent / "goldens" / "metrics.json"
SHORT = ["num_rounds=4", "eval_every=2", "data.test_samples=300"]
SMALL = SHORT + ["num_nodes=16"]

# in-process cases on the quickstart config (16 nodes): name -> --set overrides
EXTRA = {
    "faults_churn_links": ["faults.churn_leave=0.1", "faults.churn_join=0.3", "faults.link_failure=0.2",
                           "faults.message_loss=0.1", "faults.rejoin=stale"],
    "faults_partition_late": ["faults.partition_groups=2", "faults.partition_round=2", "faults.heal_round=4",
                              "faults.late_fraction=0.25", "faults.join_round=3"],
    "threat_gaussian_trimmed": ["topology.graph=complete", "threat.num_byzantine=3", "threat.attack=gaussian",
                                "algorithm.aggregator=trimmed_mean", "algorithm.f=3"],
    "threat_alie_krum_neighbors": ["topology.graph=random_regular", "topology.degree=6", "threat.num_byzantine=2",
                                   "threat.attack=alie", "threat.collusion=neighbors", "algorithm.aggregator=krum",
                                   "algorithm.f=1", "threat.placement=degree"],
    "threat_sybil_foolsgold": ["topology.graph=complete", "threat.num_byzantine=4", "threat.attack=ipm",
                               "threat.sybil=true", "algorithm.aggregator=foolsgold"],
    "threat_dmpa_clipping": ["topology.graph=complete", "threat.num_byzantine=3", "threat.attack=dmpa",
                             "algorithm.aggregator=centered_clipping", "algorithm.tau=0.5"],
    "threat_label_flip": ["threat.num_byzantine=4", "threat.attack=label_flip", "algorithm.aggregator=median",
                          "topology.graph=complete"],
    "threat_backdoor": ["threat.fraction=0.25", "threat.attack=backdoor", "threat.target_label=3"],
    "privacy_pairwise": ["privacy.clip=1.0", "privacy.noise_multiplier=0.5", "privacy.pairwise_multiplier=1.0",
                         "topology.graph=exponential"],
    "choco_qsgd": ["algorithm.name=choco", "algorithm.compressor=qsgd", "algorithm.qsgd_levels=4",
                   "algorithm.consensus_lr=0.3"],
    "choco_random_k": ["algorithm.name=choco", "algorithm.compressor=random_k", "algorithm.compress_ratio=0.1"],
    "diloco_sign_ef": ["algorithm.name=diloco", "algorithm.compressor=sign", "algorithm.num_local_steps=3"],
    "diloco_gossip": ["algorithm.name=diloco", "algorithm.combine=gossip", "algorithm.num_local_steps=2"],
    "local_sgd_int8": ["algorithm.name=local_sgd", "algorithm.compressor=int8", "algorithm.num_local_steps=2"],
    "dsgd_cta_adamw": ["algorithm.order=cta", "algorithm.optimizer=adamw", "algorithm.lr=0.01",
                       "algorithm.weight_decay=0.01"],
    "dsgd_partial_gossip_steps": ["algorithm.share_fraction=0.5", "algorithm.gossip_steps=2",
                                  "algorithm.momentum=0.5"],
    "dsgd_resample": ["topology.graph=erdos_renyi", "topology.p=0.4", "topology.schedule=resample"],
    "dsgd_sampled": ["topology.schedule=sampled", "topology.fraction=0.5"],
    "dsgd_random_matching": ["topology.schedule=random_matching"],
    "dsgd_watts_strogatz": ["topology.graph=watts_strogatz", "topology.k=4", "topology.p=0.3",
                            "data.partition=shards", "data.classes_per_node=3"],
    "dsgd_cnn_quantity": ["model.name=cnn", "model.channels=[4, 8]", "data.partition=quantity_skew",
                          "data.alpha=2.0", "data.local_test_fraction=0.2"],
    "dsgd_synthetic_logreg": ["data.dataset=synthetic", "data.num_samples=800", "model.name=logreg",
                              "model.same_init=false"],
    "dsgd_mnist1d_loop": ["data.dataset=mnist1d", "data.num_samples=1000", "model.grad_strategy=loop"],
    "gt_server": ["algorithm.name=gradient_tracking", "algorithm.server_period=2", "algorithm.server_fraction=0.5"],
    "push_sum_directed_ring": ["algorithm.name=push_sum", "topology.graph=directed_ring",
                               "topology.mixing=column_stochastic"],
    "fedavg_uniform": ["algorithm.name=fedavg", "algorithm.weighting=uniform", "algorithm.fraction=0.5"],
    "fedprox": ["algorithm.name=fedprox", "algorithm.prox_mu=0.1", "algorithm.num_local_steps=2"],
    "modest_two": ["algorithm.name=modest", "algorithm.sample_size=6", "algorithm.num_aggregators=2"],
    "spsa": ["algorithm.name=spsa", "algorithm.spsa_perturbations=2"],
    "gossip_learning": ["algorithm.name=gossip_learning", "clock.speed_sigma=0.5"],
    "async_push_sum": ["algorithm.name=async_push_sum", "topology.graph=directed_exponential",
                       "topology.mixing=column_stochastic"],
    "async_local_sgd_stale": ["algorithm.name=async_local_sgd", "algorithm.staleness_power=0.5",
                              "clock.straggler_fraction=0.25"],
    "clock_slowdowns_max_degree": ["topology.mixing=max_degree", "clock.slowdowns=[1,1,1,1,2,2,2,2,1,1,1,1,3,3,3,3]",
                                   "clock.bandwidth_mbps=1.0"],
    "relays_hubs_crash": ["topology.graph=barabasi_albert", "data.relay_fraction=0.25", "faults.crash_fraction=0.5",
                          "faults.crash_among=relays", "faults.crash_round=2", "faults.crash_placement=hubs"],
}


def _cases() -> dict[str, tuple[str, list[str]]]:
    cases = {f"config:{p.stem}": (str(p), SHORT) for p in sorted((ROOT / "configs").glob("*.yaml"))}
    cases.update({name: (str(ROOT / "configs" / "quickstart.yaml"), SMALL + sets) for name, sets in EXTRA.items()})
    return cases


def _rows(config: str, sets: list[str]) -> list[dict]:
    from peerlearn.config import load_config
    from peerlearn.build import build
    from peerlearn.engines import simulate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = simulate(build(load_config(config, sets)))
    finally:
        torch.set_num_threads(threads)
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def _data_missing(config: str) -> str | None:
    text = Path(config).read_text()
    if "fashion_mnist" in text and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        return "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
    if "shakespeare" in text:
        from peerlearn.data.shakespeare import _find_folder

        try:
            _find_folder(None)
        except ValueError:
            return "Shakespeare plays not installed (make data)"
    return None


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.mark.parametrize("case", sorted(_cases()))
def test_golden_metrics(case):
    goldens = json.loads(GOLDENS.read_text())
    config, sets = _cases()[case]
    if case not in goldens:
        pytest.fail(f"no golden for {case}; record with python -m tests.test_goldens")
    missing = _data_missing(config)
    if missing:
        pytest.skip(missing)
    got, want = _rows(config, sets), goldens[case]
    assert [r["round"] for r in got] == [r["round"] for r in want]
    for g, w in zip(got, want):
        assert set(w) <= set(g), f"{case}: columns lost: {set(w) - set(g)}"
        bad = {k: (g[k], w[k]) for k in w if not _same(g[k], w[k])}
        assert not bad, f"{case} round {w['round']}: {bad}"


def test_golden_distributed_matches_recorded(tmp_path):
    """Two real ranks (gloo on 127.0.0.1) give the recorded rows of the distributed run."""
    want = json.loads(GOLDENS.read_text())["distributed:quickstart"]
    got = _distributed_rows(tmp_path)
    for g, w in zip(got, want, strict=True):
        bad = {k: (g[k], w[k]) for k in w if not _same(g[k], w[k])}
        assert not bad, f"distributed round {w['round']}: {bad}"


def _distributed_rows(tmp_path: Path) -> list[dict]:
    from peerlearn.report import read_run

    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "peerlearn", "run", str(ROOT / "configs" / "quickstart.yaml"), "--engine",
           "distributed", "--nproc", "2", "--timeout-s", "20", "--quiet", "--out", str(out)]
    for s in SMALL:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, timeout=300, env=env, cwd=tmp_path, capture_output=True)
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_run(out)[1]]


def record() -> None:
    import tempfile

    goldens = {}
    for case, (config, sets) in sorted(_cases().items()):
        if _data_missing(config):
            print(f"skip {case}: data missing")
            continue
        goldens[case] = _rows(config, sets)
        print(f"{case}: {len(goldens[case])} rows, acc_mean {goldens[case][-1]['acc_mean']:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        goldens["distributed:quickstart"] = _distributed_rows(Path(tmp))
    GOLDENS.write_text(json.dumps(goldens, indent=0, sort_keys=True))


if __name__ == "__main__":
    record()
