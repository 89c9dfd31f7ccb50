import json

import pytest
import yaml

from peerlearn import cli
from peerlearn.engines.run import COLUMNS, TIMINGS
from peerlearn.report import read_run
from tests.conftest import interrupt_after

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


@pytest.mark.integration
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


def test_threads_and_the_allocator_are_chosen_and_recorded(config_file, tmp_path, monkeypatch):
    """--threads wins over OMP_NUM_THREADS (which tests pin to 1); summary.json records the choice, the load
    average and the allocator mode; PEERLEARN_MALLOC=system leaves glibc alone; the numbers do not move."""
    import torch

    assert cli.main(["run", str(config_file), "--out", str(tmp_path / "a"), "--quiet", "--threads", "2"]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["threads"] == 2 and summary["load_average_1m"] >= 0 and summary["malloc"] in ("kept", "system")
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["threads"] == 2
    torch.set_num_threads(1)
    monkeypatch.setenv("PEERLEARN_MALLOC", "system")
    assert cli.main(["run", str(config_file), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    summary_b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary_b["threads"] == 1 and summary_b["malloc"] == "system"
    assert summary_b["final"]["acc_mean"] == pytest.approx(summary["final"]["acc_mean"], abs=0.02)


def test_choose_threads_counts_only_idle_cores(monkeypatch):
    import os

    from peerlearn import resources

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(resources, "usable_cores", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (6.2, 0.0, 0.0))
    assert resources.choose_threads() == (2, 6.2)  # 8 cores, 6.2 busy: two idle
    monkeypatch.setattr(os, "getloadavg", lambda: (30.0, 0.0, 0.0))
    assert resources.choose_threads()[0] == 1  # never zero
    assert resources.choose_threads(3)[0] == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert resources.choose_threads()[0] == 5


def test_compare_labels_runs_of_the_same_name_alike(tmp_path):
    """Issue 38 (8): two runs named seed0 were labelled ``seed0`` and a full path; both get the shortest path
    that tells them apart."""
    from peerlearn.cli.reports import run_labels

    a, b, c = tmp_path / "lr=0.1" / "seed0", tmp_path / "lr=0.2" / "seed0", tmp_path / "other"
    assert run_labels([str(a), str(b), str(c)]) == ["lr=0.1/seed0", "lr=0.2/seed0", "other"]
    assert run_labels([str(tmp_path / "x" / "s" / "seed0"), str(tmp_path / "y" / "s" / "seed0")]) == [
        "x/s/seed0", "y/s/seed0"]


@pytest.mark.parametrize("lo, hi", [(3.0, 30.0), (1.01, 1.9), (1e-9, 1e9), (40.0, 400.0)],
                         ids=["one-decade", "under-a-decade", "eighteen-decades", "decade-of-hundreds"])
def test_compare_log_axes_have_labels_that_do_not_overlap(tmp_path, monkeypatch, lo, hi):
    """Issue 38 (8): on an axis spanning about one decade matplotlib labelled every minor tick and 3x10^0 ran
    into 4x10^0. Every log axis of the compare figure now has at least two labels in view, none overlapping."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from peerlearn.report import plots

    figures, real = [], plots.subplots

    def kept(*grid, figsize):  # keep the figure to measure its labels
        fig, axes = real(*grid, figsize=figsize)
        figures.append(fig)
        return fig, axes
    monkeypatch.setattr(plots, "subplots", kept)
    rows = [{"round": r, "acc_mean": 0.5, "bytes_sent_per_node": 1e6 * (lo + (hi - lo) * r / 10),
             "consensus_distance": 0.1 / (r + 1), "sim_time_s": lo + (hi - lo) * r / 10} for r in range(11)]
    plots.plot_compare({"a": rows, "b": rows}, tmp_path / "c.png", x="sim_time_s")
    fig = figures[-1]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() != "log":
                continue
            low, high = sorted(axis.get_view_interval())
            shown = [t for t in axis.get_ticklabels(which="both")
                     if t.get_visible() and t.get_text() and low <= t.get_position()[axis is ax.yaxis] <= high]
            assert len(shown) >= 2, [t.get_text() for t in shown]
            boxes = [t.get_window_extent(renderer) for t in shown]
            for i, box in enumerate(boxes):
                assert not any(box.overlaps(other) for other in boxes[i + 1:]), [t.get_text() for t in shown]


def test_a_run_with_clipping_and_no_noise_writes_its_report_with_an_infinite_epsilon(tmp_path):
    """Clipping without noise is epsilon = infinity: the tables and report.html show it instead of failing."""
    import math

    from peerlearn import cli
    from peerlearn.report.tables import _fmt

    assert _fmt(math.inf, "sci") == "∞" and _fmt(math.inf, "int") == "∞" and _fmt(-math.inf, "acc") == "-∞"
    out = tmp_path / "run"
    assert cli.main(["run", "configs/privacy.yaml", "--set", "num_rounds=4", "--set", "eval_every=2", "--set",
                     "privacy.noise_multiplier=0.0", "--out", str(out), "--quiet"]) == 0
    assert "∞" in (out / "report.html").read_text()
