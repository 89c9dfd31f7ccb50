import json

import pytest
import yaml

from peerlearn import cli
from peerlearn.engines.run import COLUMNS
from peerlearn.report import read_run
from tests.conftest import interrupt_after
from peerlearn.engines.run import TIMINGS

SMALL = {"num_nodes": 8, "num_rounds": 20, "eval_every": 5, "model": {"hidden": [16]},
         "algorithm": {"lr": 0.2, "batch_size": 8}}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return path


def test_run_writes_the_run_directory(config_file, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["run", str(config_file), "--out", str(out), "--quiet"]) == 0
    for name in ("config.yaml", "metrics.csv", "summary.json", "accuracy.png", "accuracy_vs_bytes.png",
                 "consensus.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["num_nodes"] == 8 and summary["seed"] == 0
    assert summary["final"]["round"] == 20 and "bytes_sent_per_node" in summary["final"]
    assert summary["wall_time_s"] > 0
    assert yaml.safe_load((out / "config.yaml").read_text())["algorithm"]["lr"] == 0.2
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == COLUMNS
    # an earlier run is never silently overwritten
    assert cli.main(["run", str(config_file), "--out", str(out), "--quiet"]) == 2


def test_same_seed_gives_identical_metrics(config_file, tmp_path):
    for k in (1, 2):
        assert cli.main(["run", str(config_file), "--out", str(tmp_path / f"r{k}"), "--quiet"]) == 0
    a, b = (read_run(tmp_path / f"r{k}")[1] for k in (1, 2))
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]  # noqa: E731
    assert repr(strip(a)) == repr(strip(b))  # bit-identical, NaN included
    assert cli.main(["run", str(config_file), "--set", "seed=1", "--out", str(tmp_path / "r3"), "--quiet"]) == 0
    assert repr(strip(read_run(tmp_path / "r3")[1])) != repr(strip(a))


def test_interrupted_run_keeps_what_it_wrote(config_file, tmp_path, monkeypatch):
    restore = interrupt_after(monkeypatch, 10)  # Ctrl-C after round 10's row, before its checkpoint
    out = tmp_path / "run"
    assert cli.main(["run", str(config_file), "--out", str(out), "--quiet"]) == 130
    summary, rows = read_run(out)
    assert [r["round"] for r in rows] == [0, 5, 10]
    assert summary["status"] == "interrupted" and summary["rounds_completed"] == 10
    assert (out / "accuracy.png").is_file() and (out / "checkpoint.pt").is_file()
    restore()
    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 0  # resumes from round 5's checkpoint
    summary, rows = read_run(out)
    assert summary["status"] == "completed" and [r["round"] for r in rows][:4] == [0, 5, 10, 15]


def test_list_shows_every_component(capsys):
    from peerlearn.config import REGISTRIES

    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for registry in REGISTRIES.values():
        for name in registry:
            assert name in out
    assert "degree=4" in out and "alpha=1.0" in out  # each member's own keys with their defaults


def test_compare_writes_table_and_plot(config_file, tmp_path, capsys):
    for graph in ("ring", "complete"):
        assert cli.main(["run", str(config_file), "--set", f"topology.graph={graph}",
                         "--out", str(tmp_path / graph), "--quiet"]) == 0
    png = tmp_path / "cmp.png"
    assert cli.main(["compare", str(tmp_path / "ring"), str(tmp_path / "complete"), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "ring" in out and "complete" in out and png.stat().st_size > 10_000
    assert cli.main(["compare", str(tmp_path / "nothing")]) == 2


def test_validate_rejects_a_key_the_chosen_member_does_not_read(config_file, capsys):
    assert cli.main(["validate", str(config_file), "--set", "topology.degree=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: topology.degree: not a key of") and "\n" not in err
    assert cli.main(["validate", str(config_file), "--set", "topology.graph=random_regular",
                     "--set", "topology.degree=3"]) == 0


def test_resume_reads_a_run_directory_written_before_keys_belonged_to_members(config_file, tmp_path, monkeypatch,
                                                                              capsys):
    """An earlier peerlearn saved every key of every section; resuming ignores the ones no part reads."""
    restore = interrupt_after(monkeypatch, 10)  # Ctrl-C after round 10's row, before its checkpoint
    out = tmp_path / "run"
    assert cli.main(["run", str(config_file), "--out", str(out), "--quiet"]) == 130
    restore()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["algorithm"].update(outer_lr=0.7, compress_ratio=0.01, f=1)  # the old flat schema's keys
    saved["topology"].update(degree=4, p=0.1)
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("note: ") and "\n" not in err
    assert all(k in err.split("ignored: ")[1].split(", ") for k in ("topology.degree", "topology.p", "algorithm.f",
                                                                    "algorithm.outer_lr", "algorithm.compress_ratio"))
    assert [r["round"] for r in read_run(out)[1]] == [0, 5, 10, 15, 20]
