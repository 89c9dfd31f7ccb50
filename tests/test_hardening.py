"""Bad input gets one clear line and loses nothing (issue 19): a user's folder is never overwritten, a
corrupt or edited run directory is refused by name, data is checked at load, impossible sizes are
refused before any work, and anything unforeseen is one line with the traceback saved to a file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from peerlearn import cli
from peerlearn.report import read_run
from tests.conftest import QUICK, SMALL


def _one_line_error(capsys, code, expected_code=2) -> str:
    err = capsys.readouterr().err.strip()
    assert code == expected_code and len(err.splitlines()) == 1, err
    return err


def test_a_users_folder_is_never_overwritten(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "config.yaml").write_text("keep")
    err = _one_line_error(capsys, cli.main(["run", QUICK, *SMALL, "--out", str(notes), "--quiet"]))
    assert "holds files that are not a peerlearn run (config.yaml)" in err and "--overwrite" in err
    assert (notes / "config.yaml").read_text() == "keep" and sorted(p.name for p in notes.iterdir()) == ["config.yaml"]
    assert cli.main(["run", QUICK, *SMALL, "--out", str(notes), "--quiet", "--overwrite"]) == 0  # said so: allowed
    afile = tmp_path / "afile"
    afile.write_text("x")
    err = _one_line_error(capsys, cli.main(["run", QUICK, *SMALL, "--out", str(afile / "sub"), "--quiet"]))
    assert "is a file, not a folder" in err and afile.read_text() == "x"


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "foreign"])
def test_resume_refuses_an_unreadable_checkpoint_and_keeps_the_rows(interrupted_run, damage, capsys):
    ckpt = interrupted_run / "checkpoint.pt"
    rows_before = (interrupted_run / "metrics.csv").read_text()
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:200])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "random":
        ckpt.write_bytes(np.random.default_rng(0).bytes(5000))
    else:
        torch.save({"weights": torch.zeros(3)}, ckpt)
    capsys.readouterr()
    err = _one_line_error(capsys, cli.main(["run", "--resume", str(interrupted_run), "--quiet"]))
    assert "checkpoint.pt" in err and "rows in metrics.csv are kept" in err
    assert (interrupted_run / "metrics.csv").read_text() == rows_before


@pytest.mark.parametrize("edit, named", [({"num_nodes": 12}, "num_nodes (8 -> 12)"),
                                         ({"algorithm": {"lr": 0.5}}, "algorithm.lr (0.2 -> 0.5)")])
def test_resume_refuses_an_edited_config_naming_the_changed_keys(interrupted_run, edit, named, capsys):
    saved = yaml.safe_load((interrupted_run / "config.yaml").read_text())
    for key, value in edit.items():
        saved[key] = {**saved[key], **value} if isinstance(value, dict) else value
    (interrupted_run / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    err = _one_line_error(capsys, cli.main(["run", "--resume", str(interrupted_run), "--quiet"]))
    assert "config.yaml differs from the one the checkpoint was written with" in err and named in err


def test_resume_refuses_a_malformed_config_yaml(interrupted_run, capsys):
    (interrupted_run / "config.yaml").write_text("num_nodes: [8\n")
    capsys.readouterr()
    err = _one_line_error(capsys, cli.main(["run", "--resume", str(interrupted_run), "--quiet"]))
    assert "config.yaml is not readable YAML" in err


@pytest.mark.parametrize("argv, message", [
    (["--set", "algorithm.lr=[0.1"], "the value is not valid YAML"),
    (["--set", "seed=*x"], "the value is not valid YAML"),
    (["--set", "=3"], "expected key=value"),
    (["--set", "model.hidden=[1000000,1000000]"], "config error: model: mlp with 1,000,076,000,010 parameters needs"),
    (["--set", "num_nodes=1000000"], "config error: num_nodes: 1000000 nodes x 2 samples each"),
    (["--set", "data.dataset=synthetic", "--set", "data.num_features=10000000"], "config error: data.num_features"),
    (["--set", "clock.step_time_s=1e308"], "config error: clock.step_time_s"),  # wrote inf times, exit 0
    (["--set", "clock.bandwidth_mbps=1e-300"], "config error: clock.bandwidth_mbps"),
    (["--set", "algorithm.name=gossip_learning", "--set", "algorithm.period_s=1e300"],
     "config error: algorithm.period_s"),
    (["--engine", "distributed", "--startup-timeout-s", "0"], "config error: --startup-timeout-s"),
])
def test_bad_command_line_values_and_impossible_sizes_are_one_line_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    err = _one_line_error(capsys, cli.main(["run", QUICK, *argv, "--out", str(out), "--quiet"]))
    assert message in err and not out.exists()


@pytest.mark.parametrize("content, message", [(b"- a\n- b\n", "expected a mapping of keys, got list"),
                                              (b"42\n", "expected a mapping of keys, got int"),
                                              (b"\xff\xfe\x00", "is not UTF-8 text")])
def test_a_config_file_that_is_not_a_mapping_is_one_line(content, message, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    err = _one_line_error(capsys, cli.main(["validate", str(path)]))
    assert message in err


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return ["--set", "data.dataset=npz", "--set", f"data.path={path}", "--set", "num_nodes=2"]


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.ones((10, 3)), "y_train": np.arange(9) % 2, "x_test": np.ones((4, 3)), "y_test": np.zeros(4)},
     "x_train has 10 samples but y_train has 9 labels"),
    ({"x": np.arange(50.0), "y": np.zeros(50)}, "x_train must hold one sample per row"),
    ({"x": np.ones((50, 3)), "y": np.zeros(49)}, "x has 50 samples but y has 49 labels"),
    ({"x_train": np.ones((10, 3)), "y_train": np.arange(10) % 2, "x_test": np.ones((4, 2)), "y_test": np.zeros(4)},
     "x_test samples have shape (2,), x_train samples (3,)"),
    ({"x_train": np.where(np.eye(10, 3) > 0, np.inf, 1.0), "y_train": np.arange(10) % 2, "x_test": np.ones((4, 3)),
      "y_test": np.zeros(4)}, "x_train holds 3 non-finite values"),
    ({"x_train": np.ones((10, 3)), "y_train": np.arange(10) - 1.5, "x_test": np.ones((4, 3)), "y_test": np.zeros(4)},
     "y_train must be integer class ids; 10 of 10 are not"),
    ({"x_train": np.ones((10, 3)), "y_train": np.arange(10) - 3, "x_test": np.ones((4, 3)), "y_test": np.zeros(4)},
     "y_train must be class ids >= 0; 3 are negative"),
])
def test_data_is_checked_at_load_and_each_failure_names_the_array(arrays, message, tmp_path, capsys):
    out = tmp_path / "run"
    err = _one_line_error(capsys, cli.main(["run", QUICK, *_npz(tmp_path / "d.npz", **arrays), "--out", str(out),
                                            "--quiet"]))
    assert message in err and not out.exists()


def test_validate_does_every_check_short_of_training(capsys):
    # a partition no split can satisfy: run refused it only after writing nothing; validate now sees it too
    code = cli.main(["validate", QUICK, "--set", "data.min_samples_per_node=100", "--set", "num_nodes=64"])
    err = _one_line_error(capsys, code)
    assert "num_nodes: 64 nodes x 100 samples each" in err
    assert cli.main(["validate", QUICK, "--set", "data.min_samples_per_node=100", "--set", "num_nodes=64",
                     "--quick"]) == 0  # --quick: keys and values only, and it says so
    assert "Not checked: training itself" in capsys.readouterr().out


def test_an_unforeseen_error_is_one_line_with_the_traceback_saved(tmp_path, capsys):
    plugin = tmp_path / "buggy.py"
    plugin.write_text(
        "from typing import Literal\n"
        "from peerlearn.data import DATASETS, DatasetSpec\n\n\n"
        "@DATASETS.register\n"
        "class BuggySpec(DatasetSpec):\n"
        "    \"\"\"A user's loader with a bug.\"\"\"\n\n"
        "    name: Literal['buggy'] = 'buggy'\n\n"
        "    def build(self, ctx):\n"
        "        return {}['x_train']\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"plugins": ["buggy.py"], "data": {"dataset": "buggy"}}))
    err = _one_line_error(capsys, cli.main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]), 1)
    assert err.startswith("error: KeyError: 'x_train'; traceback saved to ")
    saved = err.split("traceback saved to ")[1]
    assert "return {}['x_train']" in open(saved).read()
    assert not (tmp_path / "run").exists()


def test_an_interrupted_run_still_resumes_to_the_same_rows(interrupted_run):
    assert cli.main(["run", "--resume", str(interrupted_run), "--quiet"]) == 0
    assert [r["round"] for r in read_run(interrupted_run)[1]] == [0, 5, 10, 15, 20]


@pytest.mark.integration
def test_a_run_that_cannot_fit_stops_before_any_work_with_its_estimate(tmp_path):
    """Under a 3 GiB address-space limit (``ulimit -v``), 64 nodes of a 4.3M-parameter MLP (6.6 GiB of
    model copies) are refused with one line naming num_nodes and the estimate by part; nothing is written."""
    import resource
    import subprocess
    import sys

    out = tmp_path / "run"
    limit = 3 * 2**30

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "peerlearn", "run", QUICK, "--set", "num_nodes=64", "--set",
                           "model.hidden=[2048,2048]", "--out", str(out), "--quiet"], preexec_fn=cap,
                          capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                           "OMP_NUM_THREADS": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "num_nodes: 64 nodes x 4,349,962 parameters" in lines[0] and "5 float32 copies" in lines[0] and "models 5.2" in lines[0], lines[0]
    assert "GiB available" in lines[0] and not out.exists()


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "table"])
def test_an_interrupted_run_says_what_it_kept_and_how_to_go_on(tmp_path, monkeypatch, capsys, quiet):
    """Issue 38 (4): an interrupted run printed the final table and listed final_model.pt (not written), said
    nothing with --quiet, and never said how to continue; a stale checkpoint.pt.tmp stayed behind."""
    from tests.conftest import interrupt_after

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt.tmp").write_bytes(b"left by a kill mid-write")
    (out / "final_model.pt.tmp").write_bytes(b"left by a kill mid-write")
    restore = interrupt_after(monkeypatch, 10)
    assert cli.main(["run", QUICK, *SMALL, "--out", str(out), "--overwrite"] + ["--quiet"] * quiet) == 130
    restore()
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == (
        f"interrupted: {out}/ keeps the rows to round 10; continue from round 5 with: peerlearn run --resume {out}")
    assert "final_model.pt" not in captured.out + captured.err and "metric (final round)" not in captured.out
    assert not (out / "checkpoint.pt.tmp").exists() and (out / "checkpoint.pt").is_file()
    assert not (out / "final_model.pt.tmp").exists()
