"""One battery over every registered member of every family: its spec round-trips through YAML, a
config naming it builds (and runs a round), it appears in ``peerlearn list``, and one bad value is a
one-line error naming the field (exit 2, nothing written). Adding a member adds its cases here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt

import peerlearn.config  # noqa: F401 (registers every built-in member)
from peerlearn import cli
from peerlearn.build import build
from peerlearn.config import parse_config
from peerlearn.engines import simulate
from peerlearn.report.catalog import catalog
from peerlearn.spec import REGISTRIES, dump, validate
from tests.data.test_files import _cifar, _femnist, _png
from tests.data.test_shakespeare import _write_plays

MEMBERS = [(family, name) for family, registry in REGISTRIES.items() for name in registry]
BASE = {"seed": 0, "num_nodes": 16, "num_rounds": 1, "eval_every": 1,
        "topology": {"graph": "complete"}, "data": {"dataset": "digits", "test_samples": 100},
        "model": {"name": "mlp", "hidden": [8]}, "algorithm": {"name": "dsgd", "lr": 0.1, "batch_size": 4}}


def _files(tmp_path: Path) -> dict:
    ring = tmp_path / "ring.txt"
    ring.write_text("\n".join(f"{i} {(i + 1) % 16}" for i in range(16)))
    npz = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, x=rng.normal(size=(200, 5)).astype(np.float32), y=rng.integers(0, 3, 200))
    plays = tmp_path / "plays"
    plays.mkdir()
    _write_plays(plays, n_roles=8)
    _femnist(tmp_path / "leaf", rng)
    _cifar(tmp_path / "cifar10", rng, per_batch=8)
    _cifar(tmp_path / "cifar100", rng, "cifar100", per_batch=40)
    for k in range(20):
        for label in ("a", "b"):
            _png(tmp_path / "images" / label / f"{k}.png", (4, 4), (k, 0, 0))
    return {"ring": str(ring), "npz": str(npz), "plays": str(plays), "leaf": str(tmp_path / "leaf"),
            "cifar10": str(tmp_path / "cifar10"), "cifar100": str(tmp_path / "cifar100"),
            "image_folder": str(tmp_path / "images")}


def _text(num_nodes: int, files: dict) -> dict:
    return {"dataset": "shakespeare", "path": files["plays"], "seq_len": 8, "partition": "natural",
            "min_samples_per_node": 4, "test_samples": 50}


def config_naming(family: str, name: str, files: dict) -> dict:
    """A small config in which ``name`` of ``family`` is chosen, with whatever it needs beside it."""
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    section, key = REGISTRIES[family].where.split(".")
    cfg[section] = {**cfg.get(section, {}), key: name}
    needs = {
        ("graph", "file"): {"topology": {"graph": "file", "path": files["ring"]}},
        ("graph", "erdos_renyi"): {"topology": {"graph": "erdos_renyi", "p": 0.5}},
        ("graph", "directed_ring"): {"topology": {"graph": "directed_ring", "mixing": "column_stochastic"},
                                     "algorithm": {"name": "push_sum", "lr": 0.1, "batch_size": 4}},
        ("graph", "directed_exponential"): {"topology": {"graph": "directed_exponential",
                                                         "mixing": "column_stochastic"},
                                            "algorithm": {"name": "push_sum", "lr": 0.1, "batch_size": 4}},
        ("mixing", "column_stochastic"): {"algorithm": {"name": "push_sum", "lr": 0.1, "batch_size": 4}},
        ("schedule", "resample"): {"topology": {"graph": "erdos_renyi", "p": 0.5, "schedule": "resample"}},
        ("schedule", "sequence"): {"topology": {"schedule": "sequence", "sequence": [files["ring"]]}},
        ("dataset", "mnist1d"): {"data": {"dataset": "mnist1d", "num_samples": 400, "test_samples": 100}},
        ("dataset", "npz"): {"data": {"dataset": "npz", "path": files["npz"]}},
        ("dataset", "leaf"): {"data": {"dataset": "leaf", "path": files["leaf"]}},
        ("dataset", "cifar10"): {"data": {"dataset": "cifar10", "path": files["cifar10"]}},
        ("dataset", "cifar100"): {"data": {"dataset": "cifar100", "path": files["cifar100"]}},
        ("dataset", "image_folder"): {"data": {"dataset": "image_folder", "path": files["image_folder"]}},
        ("dataset", "shakespeare"): {"data": _text(16, files), "model": {"name": "gru", "hidden": [8]},
                                     "num_nodes": 8},
        ("partition", "natural"): {"data": _text(16, files), "model": {"name": "gru", "hidden": [8]}, "num_nodes": 8},
        ("model", "gru"): {"data": _text(16, files), "model": {"name": "gru", "hidden": [8]}, "num_nodes": 8},
        ("model", "cnn"): {"model": {"name": "cnn", "channels": [2, 4]}},
        ("model", "logreg"): {"model": {"name": "logreg"}},
        ("model", "resnet"): {"model": {"name": "resnet", "depth": 8, "width": 4}},
        ("model", "vgg11"): {"model": {"name": "vgg11", "width": 2}},
        ("model", "transformer"): {"data": _text(16, files), "model": {"name": "transformer", "d_model": 8,
                                                                       "heads": 2, "layers": 1}, "num_nodes": 8},
        ("compressor", name): {"algorithm": {"name": "choco", "compressor": name, "lr": 0.1, "batch_size": 4}},
        ("attack", name): {"threat": {"num_byzantine": 2, "attack": name}},
    }
    for sec, value in needs.get((family, name), {}).items():
        cfg[sec] = value
    return cfg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _files(tmp_path_factory.mktemp("battery"))


@pytest.mark.parametrize("family, name", MEMBERS, ids=[f"{f}:{n}" for f, n in MEMBERS])
def test_spec_round_trips_through_yaml(family, name):
    cls = REGISTRIES[family].get(name)
    spec = cls()
    back = validate(cls, yaml.safe_load(yaml.safe_dump(dump(spec))), REGISTRIES[family].where.split(".")[0])
    assert back == spec and dump(back) == dump(spec)


@pytest.mark.parametrize("family, name", MEMBERS, ids=[f"{f}:{n}" for f, n in MEMBERS])
def test_a_config_naming_the_member_builds_and_runs(family, name, files):
    if (family, name) == ("dataset", "fashion_mnist") and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    cfg = parse_config(config_naming(family, name, files))
    chosen = {m.name for section in ("topology", "data", "model", "algorithm", "threat")
              for m in getattr(cfg, section).members() if "name" in type(m).model_fields}
    assert name in chosen
    rows = simulate(build(cfg))
    assert [r["round"] for r in rows] == [0, 1] and 0.0 <= rows[-1]["acc_mean"] <= 1.0


@pytest.mark.parametrize("family, name", MEMBERS, ids=[f"{f}:{n}" for f, n in MEMBERS])
def test_the_member_is_listed_with_its_keys(family, name):
    entry = next(e for e in catalog(family) if e.name == name)
    keys = {f.key for f in entry.fields}
    cls = REGISTRIES[family].get(name)
    assert keys == set(cls.model_fields) - {"name"} and entry.summary != "-"


def _bad_value(cls) -> tuple[str, object]:
    """A key of ``cls`` and a value its bounds refuse; else an unknown key."""
    for key, info in cls.model_fields.items():
        for m in info.metadata:
            if isinstance(m, (Ge, Gt)):
                bound = m.ge if isinstance(m, Ge) else m.gt
                return key, bound - 1 if isinstance(m, Ge) else bound
            if isinstance(m, (Le, Lt)):
                bound = m.le if isinstance(m, Le) else m.lt
                return key, bound + 1 if isinstance(m, Le) else bound
    return "not_a_key_of_anything", 1


@pytest.mark.parametrize("family, name", MEMBERS, ids=[f"{f}:{n}" for f, n in MEMBERS])
def test_one_bad_value_is_one_line_naming_the_field(family, name, files, tmp_path, capsys):
    cls = REGISTRIES[family].get(name)
    key, value = _bad_value(cls)
    cfg = config_naming(family, name, files)
    section = REGISTRIES[family].where.split(".")[0]
    cfg[section] = {**cfg[section], key: value}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert cli.main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"config error: {section}.{key}: ") and "\n" not in err, err
    assert not out.exists()


SECTION_SPECS = [k for k, v in __import__("peerlearn.config").config.SECTIONS.items() if isinstance(v, type)]


@pytest.mark.parametrize("section", SECTION_SPECS)
def test_sections_round_trip_and_refuse_a_bad_value(section, tmp_path, capsys):
    from peerlearn.config import SECTIONS

    cls = SECTIONS[section]
    spec = cls()
    assert validate(cls, yaml.safe_load(yaml.safe_dump(dump(spec))), section) == spec
    assert any(e.name == section for e in catalog(section))
    key, value = _bad_value(cls)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, section: {key: value}}))
    assert cli.main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"config error: {section}.{key}: ") and "\n" not in err, err
