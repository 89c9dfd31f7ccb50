"""``peerlearn sweep``: seeds x grid in worker processes, summary.csv, resuming an interrupted sweep,
failing cells, declared sweeps with variants, and compare with bands."""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from peerlearn import cli, results
from peerlearn.sweep import parse_grid, parse_seeds
from tests.conftest import ctrl_c_as_in_a_terminal

pytestmark = pytest.mark.integration  # sweeps run their cells in worker processes

TINY = {"num_nodes": 8, "num_rounds": 10, "eval_every": 5, "model": {"hidden": [8]},
        "algorithm": {"lr": 0.2, "batch_size": 8}}


def _sweep(*args):
    """``peerlearn sweep`` in this process (its cells still run as processes of their own: a sweep's
    parent is only the scheduler, and a process of its own would add 3 s of imports to each call)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["sweep", *map(str, args)])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    done = _sweep(config, "--seeds", "0,1", "--grid", "algorithm.lr=0.05,0.2", "--workers", "2", "--target", "0.2",
                  "--out", folder / "out")
    assert done.returncode == 0, done.stderr + done.stdout
    return config, folder / "out", done.stdout


def test_grid_and_seed_parsing():
    assert parse_grid(["algorithm.lr=0.05,0.1", "topology.graph=ring,torus"]) == {
        "algorithm.lr": [0.05, 0.1], "topology.graph": ["ring", "torus"]}
    assert parse_seeds("0,2") == [0, 2] and parse_seeds("1-3") == [1, 2, 3]
    for bad in ("a", "-1", ""):
        with pytest.raises(cli_error()):
            parse_seeds(bad)
    with pytest.raises(cli_error(), match="--grid"):
        parse_grid(["algorithm.lr"])


def cli_error():
    from peerlearn.config import ConfigError

    return ConfigError


def test_a_two_by_two_sweep_writes_four_runs_and_their_means(two_by_two):
    _, out, stdout = two_by_two
    manifest = json.loads((out / "sweep.json").read_text())
    assert sorted(c["dir"] for c in manifest["cells"]) == [
        "algorithm.lr=0.05/seed0", "algorithm.lr=0.05/seed1", "algorithm.lr=0.2/seed0", "algorithm.lr=0.2/seed1"]
    assert all(c["status"] == "completed" for c in manifest["cells"])
    for c in manifest["cells"]:  # ordinary run directories, with the cell's key and seed
        cfg = yaml.safe_load((out / c["dir"] / "config.yaml").read_text())
        assert cfg["seed"] == c["seed"] and cfg["algorithm"]["lr"] == c["grid"]["algorithm.lr"]
    summary = pd.read_csv(out / "summary.csv")
    finals = results.load_summary(out)
    assert len(finals) == 4 and set(finals["cell"]) == set(summary["cell"])
    for _, row in summary.iterrows():  # recomputed from load_summary: mean, std (ddof 1), min, max over seeds
        mine = finals[finals["cell"] == row["cell"]]
        assert row["completed"] == 2
        for metric in ("acc_mean", "acc_min", "loss_mean", "bytes_sent_per_node"):
            assert row[f"{metric}_mean"] == pytest.approx(mine[metric].mean(), rel=1e-12)
            assert row[f"{metric}_std"] == pytest.approx(mine[metric].std(ddof=1), rel=1e-9, abs=1e-15)
            assert row[f"{metric}_min"] == mine[metric].min() and row[f"{metric}_max"] == mine[metric].max()
    # the two seeds of a cell differ (the seed reached the run), the two lrs differ
    assert (summary["acc_mean_std"] > 0).all() and summary["acc_mean_mean"].nunique() == 2
    assert (out / "accuracy.png").stat().st_size > 10_000 and (out / "accuracy.pdf").read_bytes()[:4] == b"%PDF"
    assert "[4/4]" in stdout and re.search(r"\([0-2]/2\)", stdout)  # how many seeds reached the target


def test_rerunning_a_finished_sweep_runs_nothing(two_by_two):
    config, out, _ = two_by_two
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.csv")}
    again = _sweep(config, "--seeds", "0,1", "--grid", "algorithm.lr=0.05,0.2", "--workers", "2", "--target", "0.2",
                   "--out", out)
    assert again.returncode == 0 and "4 done before, 0 left" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.csv")} == before
    other = _sweep(config, "--seeds", "0,1,2", "--out", out)  # a different sweep into the same folder
    assert other.returncode == 2 and "holds a different sweep" in other.stderr


def test_overwriting_a_different_sweep_reruns_every_cell(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "num_rounds": 5}))
    out = tmp_path / "out"
    assert _sweep(config, "--grid", "algorithm.lr=0.1", "--workers", "1", "--out", out).returncode == 0
    # the same cell folder, other settings: its old completed run must not count as done
    again = _sweep(config, "--grid", "algorithm.lr=0.1", "--set", "num_rounds=10", "--workers", "1", "--out", out,
                   "--overwrite")
    assert again.returncode == 0, again.stderr
    assert "done before" not in again.stdout
    assert results.load(out)["round"].max() == 10


def test_compare_on_a_sweep_draws_bands_grouped_by_a_key(two_by_two, tmp_path, capsys):
    _, out, _ = two_by_two
    assert cli.main(["compare", str(out), "--group-by", "algorithm.lr", "--out", str(tmp_path / "bands.svg")]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "bands.svg").read_text().lstrip().startswith("<?xml") and "±" in text
    assert cli.main(["compare", str(out), "--group-by", "nope", "--out", str(tmp_path / "x.png")]) == 2


@pytest.mark.slow  # eight 40-round cells (a local Ray cluster, submitit jobs); Ray's and submitit's beyond CI's budget
@pytest.mark.parametrize("launcher", ["local", pytest.param("ray", marks=pytest.mark.extended),
                                      pytest.param("slurm", marks=pytest.mark.extended)])
def test_an_interrupted_sweep_finishes_only_what_was_left(tmp_path, launcher):
    """Ctrl-C on a sweep, then the same command: only the cells left run, on every launcher (issue 38: Ray
    tasks on a cluster started on 127.0.0.1, submitit's local executor here)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "num_rounds": 40}))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "peerlearn", "sweep", str(config), "--seeds", "0,1", "--grid",
            "algorithm.lr=0.05,0.2", "--workers", "1", "--out", str(out), "--launcher", launcher]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=ctrl_c_as_in_a_terminal)
    deadline = time.monotonic() + 240
    completed = []
    while time.monotonic() < deadline and not completed:  # wait for the first finished run
        time.sleep(0.2)
        try:
            completed = [c for c in json.loads((out / "sweep.json").read_text())["cells"] if c["status"] == "completed"]
        except (FileNotFoundError, json.JSONDecodeError):
            pass
    assert completed, "no run finished in time"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the sweep and its running worker
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again" in err
    manifest = json.loads((out / "sweep.json").read_text())
    finished = {c["dir"] for c in manifest["cells"] if c["status"] == "completed"}
    assert 1 <= len(finished) < 4
    stamps = {d: (out / d / "metrics.csv").stat().st_mtime_ns for d in finished}
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=env)
    assert again.returncode == 0, again.stderr
    assert f"{len(finished)} done before, {4 - len(finished)} left" in again.stdout
    assert {d: (out / d / "metrics.csv").stat().st_mtime_ns for d in finished} == stamps  # none run twice
    df = results.load(out)
    assert df["run"].nunique() == 4 and (df.groupby("run")["round"].apply(list) == pd.Series(
        {r: [0, 5, 10, 15, 20, 25, 30, 35, 40] for r in df["run"].unique()})).all()  # none lost, no row twice
    assert all(c["status"] == "completed" for c in json.loads((out / "sweep.json").read_text())["cells"])


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    # 2,000 nodes cannot share 1,797 digits: that cell fails when it builds; a huge lr diverges
    done = _sweep(config, "--grid", "num_nodes=8,2000", "--grid", "algorithm.lr=0.2,1e6", "--workers", "2",
                  "--out", tmp_path / "out")
    assert done.returncode == 1
    cells = {c["dir"]: c for c in json.loads((tmp_path / "out" / "sweep.json").read_text())["cells"]}
    assert cells["num_nodes=8,algorithm.lr=0.2/seed0"]["status"] == "completed"
    assert cells["num_nodes=8,algorithm.lr=1e6/seed0"]["status"] == "diverged"
    for lr in ("0.2", "1e6"):
        failed = cells[f"num_nodes=2000,algorithm.lr={lr}/seed0"]
        assert failed["status"] == "failed" and failed["error"].startswith("config error") and "\n" not in failed["error"]
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert len(summary) == 4 and summary["completed"].sum() == 1


def test_a_declared_sweep_with_variants(tmp_path):
    (tmp_path / "fedavg.yaml").write_text(yaml.safe_dump({**TINY, "algorithm": {"name": "fedavg", "lr": 0.2,
                                                                                 "batch_size": 8}}))
    config = tmp_path / "claim.yaml"
    config.write_text(yaml.safe_dump({**TINY, "sweep": {
        "title": "dsgd vs fedavg", "seeds": [3], "grid": {"num_rounds": [5]},
        "variants": {"D-SGD": {"set": {"topology.graph": "ring"}}, "FedAvg": {"config": "fedavg.yaml"}}}}))
    done = _sweep(config, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    finals = results.load_summary(tmp_path / "out")
    assert sorted(finals["variant"]) == ["D-SGD", "FedAvg"] and (finals["seed"] == 3).all()
    assert sorted(finals["algorithm.name"]) == ["dsgd", "fedavg"] and (finals["round"] == 5).all()
    assert "dsgd vs fedavg" in done.stdout
    # peerlearn run on the same file runs its base config once, saying so
    ran = subprocess.run([sys.executable, "-m", "peerlearn", "run", str(config), "--out", str(tmp_path / "base"),
                          "--quiet"], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert ran.returncode == 0 and "declares a sweep" in ran.stderr


def test_a_bad_cell_is_refused_before_any_run(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    code = cli.main(["sweep", str(config), "--grid", "algorithm.lr=0.1,-1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "algorithm.lr" in err and "sweep cell" in err
    assert not (tmp_path / "out").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "sweep": {"seeds": [0], "grids": {}}}))
    assert cli.main(["sweep", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "sweep.grids" in capsys.readouterr().err


def test_the_results_example_runs_on_a_sweep(two_by_two):
    _, out, _ = two_by_two
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "examples" / "analyze_results.py"), str(out)],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "the averaged model labels" in done.stdout and (out / "example_curves.png").is_file()


def test_the_planning_estimate_equals_the_built_runs_memory():
    """default_workers sizes the pool without building a run: its estimate must equal the built run's."""
    from pathlib import Path

    from peerlearn.build import build, estimate_memory_bytes
    from peerlearn.resources import run_memory_bytes
    from peerlearn.config import load_config

    root = Path(__file__).resolve().parents[1]
    for extra in ([], ["model.name=cnn"]):  # dense and image models, digits (installed everywhere)
        cfg = load_config(root / "configs" / "quickstart.yaml", ["num_nodes=32", *extra])
        assert estimate_memory_bytes(cfg) == run_memory_bytes(build(cfg))


@pytest.mark.slow  # five cells in two sweeps
def test_a_sweep_grows_by_seeds_and_grid_values_running_only_the_new_cells(tmp_path):
    """Issue 38 (3): adding a seed or a grid value to a finished sweep was refused as a different sweep, and
    --overwrite threw its finished runs away. The grown sweep runs only its new cells."""
    config = tmp_path / "tiny.yaml"
    # synthetic data: no scikit-learn import in each run's process
    config.write_text(yaml.safe_dump({**TINY, "num_rounds": 5, "data": {"dataset": "synthetic"}}))
    out = tmp_path / "out"
    first = _sweep(config, "--seeds", "0", "--grid", "algorithm.lr=0.2", "--workers", "2", "--out", out)
    assert first.returncode == 0, first.stderr
    kept = out / "algorithm.lr=0.2" / "seed0" / "metrics.csv"
    before = kept.stat().st_mtime_ns
    grown = _sweep(config, "--seeds", "0,1", "--grid", "algorithm.lr=0.2,0.1", "--workers", "2", "--out", out)
    assert grown.returncode == 0, grown.stderr
    assert "1 done before, 3 left" in grown.stdout and "grows" in grown.stdout
    assert kept.stat().st_mtime_ns == before  # the finished run was not run again
    summary = pd.read_csv(out / "summary.csv")
    assert summary["completed"].tolist() == [2, 2]  # two cells, two seeds each
    # a sweep that is not a superset (a seed dropped, other settings) is still another sweep
    other = _sweep(config, "--seeds", "0", "--grid", "algorithm.lr=0.2", "--set", "num_rounds=6", "--out", out)
    assert other.returncode == 2 and "holds a different sweep" in other.stderr


@pytest.mark.slow  # a local Ray cluster and submitit jobs
def test_the_launchers_give_the_local_pools_summary_and_skip_what_is_done(tmp_path):
    """Issue 38: the same sweep through a Ray cluster started on 127.0.0.1 for the sweep, and through submitit
    (its local executor here: no Slurm on this machine), gives the local pool's summary.csv (wall times
    aside); run again, it skips every completed cell."""
    config = tmp_path / "tiny.yaml"
    # synthetic data: no scikit-learn import in each run's process
    config.write_text(yaml.safe_dump({**TINY, "num_rounds": 5, "data": {"dataset": "synthetic"}}))
    summaries = {}
    for launcher in ("local", "ray", "slurm"):
        out = tmp_path / launcher
        args = [sys.executable, "-m", "peerlearn", "sweep", str(config), "--seeds", "0,1", "--workers", "2",
                "--out", str(out), "--launcher", launcher]
        env = {**os.environ, "RAY_ADDRESS": ""}
        done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr + done.stdout
        if launcher != "local":
            assert {"ray": "as Ray tasks", "slurm": "as submitit jobs on this machine"}[launcher] in done.stdout
            stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.csv")}
            again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
            assert again.returncode == 0 and "2 done before, 0 left" in again.stdout, again.stderr + again.stdout
            assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.csv")} == stamps and len(stamps) == 2
        summary = pd.read_csv(out / "summary.csv")
        summaries[launcher] = summary.drop(columns=[c for c in summary.columns if "wall_time" in c or "eval_time" in c])
    pd.testing.assert_frame_equal(summaries["ray"], summaries["local"])
    pd.testing.assert_frame_equal(summaries["slurm"], summaries["local"])
