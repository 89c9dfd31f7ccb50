import csv
import io
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml

from peerlearn.build import build
from peerlearn.engines import simulate
from tests.conftest import tiny_config
from peerlearn.engines.run import TIMINGS


def _strip(rows):
    return [{k: repr(v) for k, v in r.items() if k not in TIMINGS} for r in rows]  # repr: NaN == NaN


def _roundtrip(snapshot):
    """What a checkpoint file gives back: written and read as data, as ``RunWriter.checkpoint`` and
    ``--resume`` do (proves every part's state is data)."""
    from peerlearn.report import snapshot_io

    buf = io.BytesIO()
    snapshot_io.save(snapshot, buf)
    buf.seek(0)
    return snapshot_io.load(buf)


@pytest.mark.parametrize("sections", [
    {"algorithm": {"momentum": 0.9, "num_local_steps": 2},
     "faults": {"churn_leave": 0.1, "churn_join": 0.3, "link_failure": 0.2}},
    {"algorithm": {"name": "diloco", "optimizer": "adamw", "lr": 0.01, "num_local_steps": 3},
     "topology": {"graph": "complete"}},
    {"algorithm": {"name": "fedavg", "fraction": 0.5}, "topology": {"graph": "complete"}},
    {"algorithm": {"aggregator": "trimmed_mean"}, "topology": {"graph": "torus"},
     "threat": {"num_byzantine": 2, "attack": "gaussian"}},
    {"topology": {"schedule": "random_matching"}, "data": {"partition": "dirichlet", "alpha": 0.5}},
    {"algorithm": {"name": "gossip_learning", "momentum": 0.5}, "faults": {"churn_leave": 0.1, "churn_join": 0.3},
     "clock": {"speed_sigma": 0.5}},
    {"algorithm": {"name": "async_local_sgd", "num_local_steps": 2, "staleness_power": 0.5},
     "clock": {"straggler_fraction": 0.25}},
    {"privacy": {"clip": 1.0, "noise_multiplier": 0.3, "pairwise_multiplier": 0.5},
     "algorithm": {"share_fraction": 0.5}, "faults": {"churn_leave": 0.1, "churn_join": 0.3}},
    {"algorithm": {"name": "spsa", "lr": 0.05, "spsa_perturbations": 2, "momentum": 0.5}},
    {"algorithm": {"name": "diloco", "num_local_steps": 2, "compressor": "random_k", "compress_ratio": 0.1}},
    {"algorithm": {"acceleration": "chebyshev"}, "topology": {"graph": "random_regular", "degree": 3,
                                                             "schedule": "resample", "every": 3}},
], ids=["dsgd-momentum-faults", "diloco", "fedavg", "byzantine-gaussian", "random-matching", "gossip-learning",
        "async-local-sgd", "private-partial-churn", "spsa", "compressed-diloco",
        "accelerated-slowly-varying"])
def test_resume_from_any_checkpoint_gives_the_same_rows(sections):
    cfg = tiny_config(num_rounds=24, eval_every=4, **sections)
    snapshots = []
    full = simulate(build(cfg), on_checkpoint=lambda s: snapshots.append(_roundtrip(s)))
    assert [s["round"] for s in snapshots] == [0, 4, 8, 12, 16, 20, 24]
    for k in (1, 4):
        resumed = simulate(build(cfg), resume=snapshots[k])
        assert _strip(resumed) == _strip(full)


def _read(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in csv.DictReader(f)]


@pytest.mark.slow  # three 300-round runs in processes
def test_cli_resume_after_sigkill_writes_an_identical_metrics_csv(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "name": "killed", "seed": 3, "num_nodes": 16, "num_rounds": 300, "eval_every": 5,
        "topology": {"graph": "torus"}, "data": {"partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "hidden": [16]}, "algorithm": {"lr": 0.1, "momentum": 0.5},
        "faults": {"churn_leave": 0.05, "churn_join": 0.2}}))
    exe = [sys.executable, "-m", "peerlearn.cli", "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(exe + [str(config), "--out", str(tmp_path / "full"), "--quiet"], check=True, env=env,
                   timeout=600)
    stop_after = random.Random(0).randint(3, 30)  # evaluated rows before the kill
    proc = subprocess.Popen(exe + [str(config), "--out", str(tmp_path / "cut"), "--quiet"], env=env)
    metrics = tmp_path / "cut" / "metrics.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) > stop_after:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert len(_read(metrics)) < 61  # killed mid-run
    subprocess.run(exe + ["--resume", str(tmp_path / "cut"), "--quiet"], check=True, env=env, timeout=600)
    assert _read(metrics) == _read(tmp_path / "full" / "metrics.csv")
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()  # a completed run drops its checkpoint
    again = subprocess.run(exe + ["--resume", str(tmp_path / "cut")], capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "already complete" in again.stderr


def test_checkpoint_every_spaces_the_checkpoints_and_the_run_resumes_from_the_last_one(tmp_path):
    from peerlearn.report import RunWriter
    from peerlearn.report.run_dir import load_checkpoint

    cfg = tiny_config(num_rounds=24, eval_every=2, checkpoint_every=10)
    writer = RunWriter(tmp_path, {"num_rounds": 24}, checkpoint_every=cfg.checkpoint_every)
    saved = []

    def checkpoint(snapshot):
        writer.checkpoint(snapshot)
        saved.append(load_checkpoint(tmp_path)[1]["round"])

    full = simulate(build(cfg), on_eval=writer.append, on_checkpoint=checkpoint)
    assert sorted(set(saved)) == [0, 10, 20]
    resumed = simulate(build(cfg), resume=load_checkpoint(tmp_path)[1])
    assert _strip(resumed) == _strip(full)


def test_a_checkpoint_written_before_a_key_existed_resumes_with_its_default(interrupted_run):
    """A run interrupted by an earlier peerlearn, before ``algorithm.gossip_optimizer_state`` existed: neither its
    config.yaml nor its checkpoint names the key; resuming reads it as its default, not as an edit."""
    from peerlearn import cli
    from peerlearn.report import snapshot_io
    from peerlearn.report.run_dir import CHECKPOINT, read_run

    snapshot = snapshot_io.load(interrupted_run / CHECKPOINT)
    assert snapshot["config"]["algorithm"].pop("gossip_optimizer_state") is False
    snapshot_io.save(snapshot, interrupted_run / CHECKPOINT)
    saved = yaml.safe_load((interrupted_run / "config.yaml").read_text())
    del saved["algorithm"]["gossip_optimizer_state"]
    (interrupted_run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert cli.main(["run", "--resume", str(interrupted_run), "--quiet"]) == 0
    assert read_run(interrupted_run)[0]["status"] == "completed"
