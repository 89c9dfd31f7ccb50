"""One battery over every registered member of every family: its spec round-trips through YAML, a
config naming it builds (and runs a round), it appears in ``peerlearn list``, and one bad value is a
one-line error naming the field (exit 2, nothing written). Adding a member adds its cases here. The
checks are ``peerlearn.testing``'s, which plugin authors call on their own members."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

import peerlearn.config  # noqa: F401 (registers every built-in member)
from peerlearn import cli, testing
from peerlearn.spec import REGISTRIES
from peerlearn.testing import BASE, bad_value
from tests.data.test_files import _cifar, _femnist, _png
from tests.data.test_shakespeare import _write_plays

MEMBERS = [(family, name) for family, registry in REGISTRIES.items() for name in registry]


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
    (tmp_path / "torch_data.py").write_text(  # a user's factory of a torch Dataset (its items: two tensors)
        "import torch\n\n\ndef make(n):\n    g = torch.Generator().manual_seed(0)\n"
        "    return torch.utils.data.TensorDataset(torch.randn(n, 5, generator=g), torch.arange(n) % 3)\n")
    try:
        import datasets

        datasets.Dataset.from_dict({"x": rng.normal(size=(200, 5)).tolist(), "label": rng.integers(0, 3, 200).tolist()}
                                   ).save_to_disk(str(tmp_path / "hf"))
    except ImportError:  # the hf extra: its dataset is skipped
        pass
    return {"ring": str(ring), "npz": str(npz), "plays": str(plays), "leaf": str(tmp_path / "leaf"),
            "cifar10": str(tmp_path / "cifar10"), "cifar100": str(tmp_path / "cifar100"),
            "image_folder": str(tmp_path / "images"), "torch_data": str(tmp_path / "torch_data.py"),
            "hf": str(tmp_path / "hf")}


def _text(num_nodes: int, files: dict) -> dict:
    return {"dataset": "shakespeare", "path": files["plays"], "seq_len": 8, "partition": "natural",
            "min_samples_per_node": 4, "test_samples": 50}


def config_naming(family: str, name: str, files: dict) -> dict:
    """A small config in which ``name`` of ``family`` is chosen, with whatever it needs beside it."""
    cfg = testing.config_naming(family, name)
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
        ("dataset", "torch"): {"data": {"dataset": "torch", "factory": "torch_data.py:make",
                                        "factory_kwargs": {"n": 200}}, "plugins": [files["torch_data"]]},
        ("dataset", "hf_disk"): {"data": {"dataset": "hf_disk", "path": files["hf"]}},
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
        ("algorithm", "experts"): {"data": {"dataset": "digits", "test_samples": 100, "partition": "clusters",
                                            "num_clusters": 2}},
    }
    for sec, value in needs.get((family, name), {}).items():
        cfg[sec] = value
    return cfg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _files(tmp_path_factory.mktemp("battery"))


@pytest.mark.parametrize("family, name", MEMBERS, ids=[f"{f}:{n}" for f, n in MEMBERS])
def test_spec_round_trips_through_yaml(family, name):
    testing.check_round_trip(family, name)


@pytest.mark.parametrize("family, name", MEMBERS, ids=[f"{f}:{n}" for f, n in MEMBERS])
def test_a_config_naming_the_member_builds_and_runs(family, name, files):
    if (family, name) == ("dataset", "fashion_mnist") and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    if (family, name) == ("dataset", "hf_disk") and not Path(files["hf"]).is_dir():
        pytest.skip("Hugging Face datasets not installed (the hf extra)")
    rows = testing.check_builds_and_runs(family, name, config_naming(family, name, files))
    assert [r["round"] for r in rows] == [0, 1]


@pytest.mark.parametrize("family, name", MEMBERS, ids=[f"{f}:{n}" for f, n in MEMBERS])
def test_the_member_is_listed_with_its_keys(family, name):
    testing.check_listed(family, name)


@pytest.mark.parametrize("family, name", MEMBERS, ids=[f"{f}:{n}" for f, n in MEMBERS])
def test_one_bad_value_is_one_line_naming_the_field(family, name, files, tmp_path):
    testing.check_bad_value_is_one_line(family, name, config_naming(family, name, files), tmp_path)


SECTION_SPECS = [k for k, v in __import__("peerlearn.config").config.SECTIONS.items() if isinstance(v, type)]


@pytest.mark.parametrize("section", SECTION_SPECS)
def test_sections_round_trip_and_refuse_a_bad_value(section, tmp_path, capsys):
    from peerlearn.config import SECTIONS
    from peerlearn.report.catalog import catalog
    from peerlearn.spec import dump, validate

    cls = SECTIONS[section]
    spec = cls()
    assert validate(cls, yaml.safe_load(yaml.safe_dump(dump(spec))), section) == spec
    assert any(e.name == section for e in catalog(section))
    key, value = bad_value(cls)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, section: {key: value}}))
    assert cli.main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"config error: {section}.{key}: ") and "\n" not in err, err
