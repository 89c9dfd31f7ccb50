"""Per-run outputs of the research workflow: strict summary.json, final_model.pt, report.html, results.load,
progress lines off a terminal, experiment trackers."""

import base64
import csv
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from peerlearn import __version__, cli, results
from peerlearn.build import build
from peerlearn.config import load_config

SMALL = {"num_nodes": 8, "num_rounds": 20, "eval_every": 5, "model": {"hidden": [16]},
         "algorithm": {"lr": 0.2, "batch_size": 8}, "data": {"partition": "dirichlet", "alpha": 0.5}}


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    config = folder / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    assert cli.main(["run", str(config), "--out", str(folder / "run"), "--quiet"]) == 0
    return config, folder / "run"


def test_summary_json_is_strict_json_on_a_diverged_run(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "algorithm": {"lr": 1e6, "batch_size": 8}}))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    summary = _strict((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert any(v is None for v in summary["final"].values())  # NaN metrics are null, not a bare NaN
    df = results.load(tmp_path / "run")
    assert df["status"].iloc[0] == "diverged"


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"peerlearn {__version__}"


def test_final_model_reloads_every_node_and_the_average(finished_run):
    config, run = finished_run
    built = build(load_config(config))
    x, y = built.dataset.x_test, built.dataset.y_test
    final = _strict((run / "summary.json").read_text())["final"]
    with torch.no_grad():
        accs = [float((results.load_model(run, node=i)(x).argmax(-1) == y).float().mean()) for i in range(8)]
        avg = float((results.load_model(run)(x).argmax(-1) == y).float().mean())
    # the saved models are the ones the final row evaluated: per-node accuracies average to acc_mean
    assert sum(accs) / 8 == pytest.approx(final["acc_mean"], abs=1e-6)
    assert min(accs) == pytest.approx(final["acc_min"], abs=1e-6)
    assert avg == pytest.approx(final["acc_avg_model"], abs=1e-6)
    with pytest.raises(ValueError, match="node"):
        results.load_model(run, node=8)


def test_save_model_false_writes_none(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "num_rounds": 5, "save_model": False}))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert not (tmp_path / "run" / "final_model.pt").exists()
    with pytest.raises(FileNotFoundError, match="save_model"):
        results.load_model(tmp_path / "run")


def test_load_round_trips_every_column_of_metrics_csv(finished_run):
    _, run = finished_run
    df = results.load(run)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(df) == len(rows) == 5
    for column in rows[0]:
        for i, row in enumerate(rows):
            want = float(row[column]) if row[column] != "" else math.nan
            got = float(df[column].iloc[i])
            assert (math.isnan(want) and math.isnan(got)) or got == want, column
    # config keys as columns, identifiers
    assert (df["algorithm.lr"] == 0.2).all() and (df["seed"] == 0).all() and (df["num_nodes"] == 8).all()
    assert (df["run"] == str(run)).all() and (df["status"] == "completed").all()
    summary = results.load_summary(run)
    assert len(summary) == 1 and summary["acc_mean"].iloc[0] == df["acc_mean"].iloc[-1]


def test_load_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        results.load(str(tmp_path / "nothing-*"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no run"):
        results.load(tmp_path / "empty")


def test_report_html_is_self_contained(finished_run):
    _, run = finished_run
    page = (run / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)  # nothing fetched when it opens
    final = json.loads((run / "summary.json").read_text())["final"]
    assert f"{final['acc_mean']:.4f}" in page and "torch" in page and "threads" in page
    assert f"{torch.__version__}" in page


@pytest.mark.integration
def test_progress_off_a_terminal_is_one_line_per_evaluation(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    out = subprocess.run([sys.executable, "-m", "peerlearn", "run", str(config), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if re.match(r"^c: round \d+/20 ", line)]
    assert [int(line.split()[2].split("/")[0]) for line in lines] == [0, 5, 10, 15, 20]
    assert "rounds/s" in lines[-1] and "ETA" in lines[-1]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_tensorboard_tracker_holds_the_evaluation_rows(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "tracking": ["tensorboard"]}))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    for tag in ("acc_mean", "loss_mean", "bytes_sent_per_node"):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        want = [(int(float(r["round"])), float(r[tag])) for r in rows if r[tag] not in ("", "nan")]
        assert [s for s, _ in logged] == [s for s, _ in want]
        assert all(v == pytest.approx(w, rel=1e-6) for (_, v), (_, w) in zip(logged, want))


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_tracker_without_its_extra_is_a_one_line_error(tmp_path, capsys, tracker):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "tracking": [tracker]}))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"peerlearn[{tracker}]" in err and err.startswith("config error: tracking")
    assert not (tmp_path / "run").exists()  # before any work


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium-headless-shell", "chromium")),
                    reason="no headless Chromium (apt-get install chromium-headless-shell)")
def test_report_html_renders_its_plots_in_headless_chromium(finished_run, tmp_path):
    import matplotlib.image

    _, run = finished_run
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    shot = tmp_path / "shot.png"
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                           "--window-size=1280,1400", (run / "report.html").resolve().as_uri()],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-500:]
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round()
    # matplotlib's first line colour (31, 119, 180) is drawn only by the embedded accuracy plot
    blue = ((abs(pixels[..., 0] - 31) < 8) & (abs(pixels[..., 1] - 119) < 8) & (abs(pixels[..., 2] - 180) < 8)).sum()
    assert blue > 200


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_tensorboard_after_resume_holds_each_round_once(tmp_path, monkeypatch):
    """Issue 38 (5): a resumed run logged the rolled-back rounds to TensorBoard a second time."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.conftest import interrupt_after

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "tracking": ["tensorboard"]}))
    out = tmp_path / "run"
    restore = interrupt_after(monkeypatch, 10)  # rows 0, 5, 10 logged; the checkpoint is round 5's
    assert cli.main(["run", str(config), "--out", str(out), "--quiet"]) == 130
    restore()
    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    logged = [(e.step, e.value) for e in events.Scalars("acc_mean")]
    assert [s for s, _ in logged] == [int(r["round"]) for r in rows] == [0, 5, 10, 15, 20]
    assert [v for _, v in logged] == pytest.approx([float(r["acc_mean"]) for r in rows], rel=1e-6)
