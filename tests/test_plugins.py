"""A user's own parts, named from YAML: examples/plugin registers an aggregator, an algorithm, an
nn.Module and a dataset; run, list, matrix, --set, validate, resume and the distributed engine treat
them as built-ins, and a broken plugin is one line naming it."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from peerlearn import cli
from peerlearn.report import read_run
from tests.conftest import interrupt_after

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "examples" / "plugin"
QUICK_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
SHORT = ["--set", "num_rounds=20", "--set", "eval_every=10"]


@pytest.fixture
def plugin_config(tmp_path) -> Path:
    """The example config beside a copy of its plugin module (a user's folder)."""
    shutil.copy(PLUGIN_DIR / "my_parts.py", tmp_path / "my_parts.py")
    shutil.copy(PLUGIN_DIR / "plugin.yaml", tmp_path / "plugin.yaml")
    return tmp_path / "plugin.yaml"


def test_a_run_made_of_user_parts_learns_and_records_their_metric(plugin_config, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["run", str(plugin_config), "--out", str(out), "--quiet", *SHORT]) == 0
    summary, rows = read_run(out)
    assert summary["status"] == "completed"
    assert rows[-1]["acc_mean"] > 0.8 > rows[0]["acc_mean"]  # two moons: chance is 0.5
    # the user algorithm's extra step metric reached metrics.csv (fraction of clipped gradients)
    assert 0.0 <= rows[-1]["clipped_mean"] <= 1.0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"] == {"name": "residual_mlp", "same_init": True, "grad_strategy": "auto", "width": 32}
    assert Path(saved["plugins"][0]).is_absolute()  # the plugin is found again from anywhere
    # issue 38 (6): summary.json says what code made the run: the plugin's file and its hash
    import hashlib

    plugins = json.loads((out / "summary.json").read_text())["environment"]["plugins"]
    mine = [p for p in plugins if p["plugin"] == saved["plugins"][0]]
    assert mine and mine[0]["sha256"] == hashlib.sha256(Path(saved["plugins"][0]).read_bytes()).hexdigest()
    # a run you made loads its model without trust_plugins (the folder carries your signature of its plugins,
    # as --resume checks); once the plugin file changes, it is code you have not seen: refused
    from peerlearn import results

    assert isinstance(results.load_model(out), torch.nn.Module)
    Path(saved["plugins"][0]).write_text(Path(saved["plugins"][0]).read_text() + "\n# changed\n")
    with pytest.raises(ValueError, match="trust_plugins=True"):
        results.load_model(out)


def test_resume_finds_the_plugin_from_another_directory(plugin_config, tmp_path, monkeypatch):

    out = tmp_path / "run"
    restore = interrupt_after(monkeypatch, 10)  # Ctrl-C after round 10's row, before its checkpoint
    assert cli.main(["run", str(plugin_config), "--out", str(out), "--quiet", *SHORT]) == 130
    restore()
    monkeypatch.chdir(tmp_path.parent)
    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 0
    assert [r["round"] for r in read_run(out)[1]] == [0, 10, 20]


def test_list_shows_the_plugin_members(capsys):
    assert cli.main(["list", "--json", "--plugin", str(PLUGIN_DIR / "my_parts.py")]) == 0
    entries = json.loads(capsys.readouterr().out)
    found = {(e["family"], e["name"]): e for e in entries}
    for key in [("aggregator", "distance_filter"), ("algorithm", "clipped_dsgd"), ("model", "residual_mlp"),
                ("dataset", "moons")]:
        assert key in found, key
    drop = next(f for f in found["aggregator", "distance_filter"]["fields"] if f["key"] == "drop")
    assert drop["default"] == 1 and drop["bounds"] == ">= 0"
    assert cli.main(["list", "aggregator"]) == 0
    assert "distance_filter" in capsys.readouterr().out


def test_set_and_validate_treat_plugin_keys_as_built_ins(plugin_config, capsys):
    assert cli.main(["validate", str(plugin_config), "--set", "algorithm.clip=0.5"]) == 0
    assert cli.main(["validate", str(plugin_config), "--set", "model.width=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: model.width: Input should be greater than or equal to 1") and "\n" not in err
    # switching to a built-in model by --set drops the plugin model's keys (width)
    assert cli.main(["validate", str(plugin_config), "--set", "model.name=mlp"]) == 0
    assert cli.main(["validate", str(plugin_config), "--set", "algorithm.outer_lr=0.5"]) == 2
    assert "algorithm.outer_lr: not a key of algorithm clipped_dsgd" in capsys.readouterr().err


def test_matrix_uses_a_user_aggregator_as_a_defence(tmp_path, capsys):
    config = tmp_path / "m.yaml"
    config.write_text(yaml.safe_dump({
        "plugins": [str(PLUGIN_DIR / "my_parts.py")], "num_nodes": 12, "num_rounds": 6, "eval_every": 6,
        "topology": {"graph": "complete"}, "data": {"dataset": "moons", "partition": "iid"},
        "model": {"name": "residual_mlp", "width": 16}, "algorithm": {"lr": 0.2, "batch_size": 8},
        "threat": {"num_byzantine": 3}}))
    out = tmp_path / "matrix"
    assert cli.main(["matrix", str(config), "--attacks", "large_norm", "--defenses", "gossip",
                     "distance_filter:drop=3", "--out", str(out), "--quiet"]) == 0
    with open(out / "matrix.csv", newline="") as f:
        rows = {(r["attack"], r["defense"]): {k: float(v) for k, v in r.items() if k.startswith("acc")}
                for r in csv.DictReader(f)}
    # dropping the 3 farthest inputs removes the 3 large-norm attackers; plain gossip is ruined by them
    assert rows["large_norm", "distance_filter:drop=3"]["acc_mean"] > 0.7
    assert rows["large_norm", "gossip"]["acc_mean"] < 0.6


def test_a_plugin_that_fails_to_import_is_one_line_naming_it(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("import numpy\nraise RuntimeError('oops: half-written plugin')\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"plugins": ["broken.py"], "num_rounds": 2}))
    out = tmp_path / "run"
    assert cli.main(["run", str(config), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: plugins: ") and "broken.py" in err and "RuntimeError: oops" in err
    assert "\n" not in err and not out.exists()
    config.write_text(yaml.safe_dump({"plugins": ["no_such_plugin_module"]}))
    assert cli.main(["validate", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'no_such_plugin_module' failed to import: ModuleNotFoundError" in err and "\n" not in err


@pytest.mark.integration
def test_peerlearn_plugins_environment_variable(tmp_path):
    """A fresh process: the environment variable alone makes the plugin's names valid."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"num_nodes": 8, "data": {"dataset": "moons"}, "model": {"name": "residual_mlp"}}))
    env = {**os.environ, "PEERLEARN_PLUGINS": str(PLUGIN_DIR / "my_parts.py")}
    done = subprocess.run([sys.executable, "-m", "peerlearn", "validate", str(config)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    env.pop("PEERLEARN_PLUGINS")
    done = subprocess.run([sys.executable, "-m", "peerlearn", "validate", str(config)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "data.dataset: unknown dataset 'moons'" in done.stderr


@pytest.mark.integration
def test_the_distributed_engine_runs_a_user_algorithm_as_the_simulator_does(plugin_config, tmp_path):
    """Two real ranks (gloo on 127.0.0.1) give the simulator's rows for the user's algorithm and model."""
    from peerlearn.build import build
    from peerlearn.config import load_config
    from peerlearn.engines import simulate

    sets = [*SHORT, "--set", "topology.graph=ring"]
    out = tmp_path / "dist"
    done = subprocess.run([sys.executable, "-m", "peerlearn", "run", str(plugin_config), "--engine", "distributed",
                           "--nproc", "2", "--timeout-s", "20", "--quiet", "--out", str(out), *sets],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    dist = read_run(out)[1]
    sim = simulate(build(load_config(plugin_config, [s for s in sets if s != "--set"])))
    assert len(dist) == len(sim)
    for d, s in zip(dist, sim):
        for key in ("acc_mean", "acc_min", "consensus_distance", "bytes_sent_total", "clipped_mean"):
            want = s.get(key, float("nan"))  # the round-0 row has no step metric yet
            assert d[key] == pytest.approx(want, rel=1e-5, abs=1e-6, nan_ok=True), (key, d["round"])


@pytest.mark.integration
def test_an_installed_package_registers_through_the_entry_point_group(tmp_path):
    """A real installed distribution (a .dist-info on the path) with a ``peerlearn.plugins`` entry point:
    a fresh process finds its members without naming any module."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(PLUGIN_DIR / "my_parts.py", site / "acme_parts.py")
    info = site / "acme_parts-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-parts\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[peerlearn.plugins]\nacme = acme_parts\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("PEERLEARN_PLUGINS", None)
    done = subprocess.run([sys.executable, "-m", "peerlearn", "list", "aggregator", "--json"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "distance_filter" in {e["name"] for e in json.loads(done.stdout)}
    # issue 38 (6): a run records the installed plugin it imported, with its package's version
    done = subprocess.run([sys.executable, "-m", "peerlearn", "run", str(Path(QUICK_CONFIG).resolve()), "--set",
                           "num_rounds=2", "--set", "num_nodes=4", "--out", str(tmp_path / "run"), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    plugins = json.loads((tmp_path / "run" / "summary.json").read_text())["environment"]["plugins"]
    assert {"plugin": "acme", "entry_point": "acme_parts", "package": "acme-parts", "version": "0.1"} in plugins
    (info / "entry_points.txt").write_text("[peerlearn.plugins]\nacme = acme_parts_missing\n")
    done = subprocess.run([sys.executable, "-m", "peerlearn", "list"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "the installed plugin 'acme' (acme_parts_missing) failed to import: ModuleNotFoundError" in done.stderr


def test_resume_keeps_the_keys_of_a_plugin_member_inside_a_built_in_one(plugin_config, tmp_path, monkeypatch, capsys):
    """Issue 38 (1): a built-in algorithm (dsgd) with a plugin aggregator and its own key (drop=2): --resume pruned
    ``algorithm.drop`` as unread before the plugin was loaded, then refused the config as changed (and said it
    was written by an earlier peerlearn)."""
    config = yaml.safe_load(plugin_config.read_text())
    config["algorithm"] = {"name": "dsgd", "lr": 0.2, "batch_size": 16, "aggregator": "distance_filter", "drop": 2}
    plugin_config.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    restore = interrupt_after(monkeypatch, 10)
    assert cli.main(["run", str(plugin_config), "--out", str(out), "--quiet", *SHORT]) == 130
    restore()
    # a fresh process, as a user resumes (this one has the plugin loaded already)
    done = subprocess.run([sys.executable, "-m", "peerlearn", "run", "--resume", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "earlier peerlearn" not in done.stderr
    assert yaml.safe_load((out / "config.yaml").read_text())["algorithm"]["drop"] == 2
    assert [r["round"] for r in read_run(out)[1]] == [0, 10, 20]


def test_set_can_switch_to_a_plugin_member_in_a_fresh_process(plugin_config, tmp_path):
    """Issue 38 (2): ``--set model.name=<plugin model>`` on a config naming the plugin kept the old member's keys
    (``model.hidden: not a key of model residual_mlp``): overrides were applied before the plugins loaded."""
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"plugins": ["my_parts.py"], "num_nodes": 8, "num_rounds": 2,
                                      "model": {"name": "mlp", "hidden": [16]}}))
    done = subprocess.run([sys.executable, "-m", "peerlearn", "validate", str(config), "--quick", "--set",
                           "model.name=residual_mlp", "--set", "model.width=8"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr


BAD_AGGREGATORS = '''
from typing import ClassVar, Literal

from peerlearn.aggregators import AGGREGATORS, AggregatorSpec


def keeps_every_input(x_NKP, valid_NK):
    return x_NKP  # [N, K, P], not [N, P]


def divides_by_zero_length(x_NKP, valid_NK):
    raise ValueError("no inputs to average")


@AGGREGATORS.register
class KeepsEveryInputSpec(AggregatorSpec):
    """A wrong rule (test)."""

    name: Literal["keeps_every_input"] = "keeps_every_input"
    factory: ClassVar = staticmethod(keeps_every_input)


@AGGREGATORS.register
class RaisesSpec(AggregatorSpec):
    """A failing rule (test)."""

    name: Literal["raises_at_once"] = "raises_at_once"
    factory: ClassVar = staticmethod(divides_by_zero_length)
'''


@pytest.mark.parametrize("name, message", [
    ("keeps_every_input", "algorithm.aggregator: keeps_every_input must return [N, P] floats (here [2, "),
    ("raises_at_once", "algorithm.aggregator: raises_at_once failed on a probe of 2 nodes x 4 models x "),
])
def test_a_plugin_aggregator_of_the_wrong_shape_is_one_line_at_build(tmp_path, capsys, name, message):
    """Issue 38 (7): a plugin aggregator returning [N, K, P] ended in a reshape error deep in models/dense.py that
    named no plugin, with no summary.json. Now the build probes a plugin's rule and names it, before any work."""
    (tmp_path / "bad_parts.py").write_text(BAD_AGGREGATORS)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"plugins": ["bad_parts.py"], "num_nodes": 8, "num_rounds": 2,
                                      "topology": {"graph": "torus"}, "model": {"name": "mlp", "hidden": [8]},
                                      "algorithm": {"name": "dsgd", "aggregator": name}}))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"config error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_the_example_plugin_passes_the_conformance_battery_plugin_authors_run(tmp_path):
    """Issue 38 (7): ``peerlearn.testing`` gives plugin authors the battery peerlearn runs on its own members."""
    from peerlearn import testing
    from peerlearn.config import load_plugins

    load_plugins([str(PLUGIN_DIR / "my_parts.py")])
    moons = {"dataset": "moons", "num_samples": 400, "partition": "iid"}
    for family, name, config in [("aggregator", "distance_filter", None),
                                 ("algorithm", "clipped_dsgd", None),
                                 ("model", "residual_mlp", None),
                                 ("dataset", "moons", testing.config_naming("dataset", "moons", data=moons))]:
        testing.check_member(family, name, config, tmp_path)
    with pytest.raises(AssertionError, match="is not registered"):
        testing.check_round_trip("aggregator", "no_such_rule")


def test_members_are_handed_a_frozen_typed_stage_of_the_build(monkeypatch):
    """Each family gets the stage it is built at, every field set when the stage is made; a member written
    against the old ``ctx.config`` gets an error naming what the stage gives."""
    import dataclasses

    from peerlearn.build import build
    from peerlearn.spec import BuildContext, DataContext, GraphContext
    from tests.conftest import tiny_config

    cfg = tiny_config(threat={"num_byzantine": 2, "attack": "alie", "z": "auto"},
                      faults={"crash_fraction": 0.25, "crash_round": 5})
    seen = {}

    def spy(family, method):
        original = getattr(type(family), method)

        def wrapped(self, ctx, *rest):
            seen[type(self).__name__] = ctx
            return original(self, ctx, *rest)
        monkeypatch.setattr(type(family), method, wrapped)

    for member, method in ((cfg.data.dataset, "build"), (cfg.faults, "build"), (cfg.topology.schedule, "build"),
                           (cfg.algorithm, "build"), (cfg.algorithm.aggregator, "build"), (cfg.threat.attack, "build")):
        spy(member, method)
    built = build(cfg)
    assert type(seen[type(cfg.data.dataset).__name__]) is DataContext
    assert type(seen[type(cfg.faults).__name__]) is GraphContext
    assert type(seen[type(cfg.topology.schedule).__name__]) is GraphContext
    for member in (cfg.algorithm, cfg.algorithm.aggregator, cfg.threat.attack):
        ctx = seen[type(member).__name__]
        assert type(ctx) is BuildContext
        unset = {f.name for f in dataclasses.fields(ctx) if getattr(ctx, f.name) is None}
        assert unset == {"test_samples", "relay_N"}  # None by the config: every test sample, no relays
    ctx = seen[type(cfg.algorithm).__name__]
    assert torch.equal(ctx.reference_P, built.params_NP[0]) and ctx.adjacency is built.adjacency
    assert (ctx.num_nodes, ctx.num_byzantine, ctx.seed("x")) == (16, 2, DataContext.of(cfg).seed("x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.num_nodes = 3
    with pytest.raises(AttributeError, match=r"BuildContext has no \.config: .*run_seed.*ctx\.seed\(stream\)"):
        ctx.config.seed
