"""Every config error stops before any work with one line naming the field, and exit code 2."""

from pathlib import Path

import pytest
import yaml

from peerlearn.cli import main
from peerlearn.config import ConfigError, load_config, parse_config, to_dict

GOOD = {"num_nodes": 8, "num_rounds": 2, "eval_every": 1, "model": {"hidden": [8]}}

CASES = [
    ({"topology": {"grph": "ring"}}, "topology.grph: not a key of topology (graph ring, mixing metropolis_hastings, "
                                     "schedule static); it takes: graph, mixing, schedule"),
    ({"learning_rate": 0.1}, "learning_rate: unknown key; allowed: name, seed"),
    ({"topology": {"graph": "rign"}}, "topology.graph: unknown graph 'rign'; registered: complete, ring"),
    ({"num_nodes": "many"}, "num_nodes: Input should be a valid integer"),
    ({"algorithm": {"lr": -0.1}}, "algorithm.lr: Input should be greater than 0"),
    ({"algorithm": {"momentum": 1.5}}, "algorithm.momentum: Input should be less than 1"),
    ({"data": {"partition": "dirichlet", "alpha": 0}}, "data.alpha: Input should be greater than 0"),
    ({"data": {"dataset": "cifar11"}}, "data.dataset: unknown dataset 'cifar11'; registered: digits"),
    ({"topology": {"graph": "random_regular", "degree": 3}, "num_nodes": 9}, "topology.degree: random_regular needs"),
    ({"topology": {"graph": "random_regular", "degree": 8}}, "topology.degree: random_regular needs degree < num_nodes"),
    ({"topology": {"graph": "hypercube"}, "num_nodes": 12}, "num_nodes: graph hypercube needs a power of 2"),
    ({"topology": {"graph": "star", "mixing": "uniform"}}, "config error: mixing 'uniform' is doubly stochastic only"),
    ({"topology": {"graph": "erdos_renyi", "p": 0.01}}, "is disconnected"),
    ({"topology": {"graph": "file"}}, "topology.path: graph 'file' needs"),
    ({"topology": {"graph": "file", "path": "/nonexistent/edges.txt"}}, "does not exist"),
    ({"algorithm": {"name": "fedavg"}, "model": {"same_init": False}}, "model.same_init"),
    ({"data": {"dataset": "npz"}}, "data.path: dataset 'npz' needs"),
    ({"data": {"dataset": "fashion_mnist", "path": "/nonexistent"}}, "data.dataset=fashion_mnist: no IDX files"),
    ({"data": {"partition": "dirichlet", "alpha": 0.01, "min_samples_per_node": 150}}, "data.partition=dirichlet"),
    ({"model": {"name": "cnn"}, "data": {"dataset": "synthetic"}}, "model.name=cnn needs image-shaped"),
    ({"algorithm": {"name": "diloco", "f": 2}}, "algorithm.f: not a key of algorithm diloco; it takes: name, lr"),
    ({"algorithm": {"aggregator": "median", "f": 2}}, "algorithm.f: not a key of algorithm dsgd"),
    ({"algorithm": {"aggregator": "trimmed_mean", "f": -1}}, "algorithm.f: Input should be greater than or equal"),
    ({"topology": "ring"}, "topology: expected a mapping"),
]


@pytest.mark.parametrize("override, message", CASES, ids=[c[1][:40] for c in CASES])
def test_config_error_is_one_line_with_exit_code_2(tmp_path, capsys, override, message):
    data = {**GOOD, **override}
    if isinstance(override.get("model"), dict) and "name" not in override["model"]:
        data["model"] = {**GOOD["model"], **override["model"]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    out_dir = tmp_path / "run"
    code = main(["run", str(path), "--out", str(out_dir), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("config error:") and message in err, err
    assert not out_dir.exists()  # nothing written, nothing lost


def test_set_overrides_and_bad_set_syntax(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    cfg = load_config(path, ["algorithm.lr=0.05", "topology.graph=torus", "model.hidden=[4, 4]"])
    assert cfg.algorithm.lr == 0.05 and cfg.topology.graph.name == "torus" and cfg.model.hidden == [4, 4]
    assert cfg.name == "c"
    assert main(["validate", str(path), "--set", "algorithm.lr"]) == 2
    assert "expected key=value" in capsys.readouterr().err


def test_missing_and_invalid_yaml(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_nodes: [1, 2\n")
    assert main(["validate", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_defaults_are_complete_and_valid():
    cfg = parse_config({})
    assert cfg.topology.graph.name == "ring" and cfg.algorithm.name == "dsgd" and cfg.data.dataset.name == "digits"


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.num_rounds >= 1


@pytest.mark.parametrize("algorithm", [{"aggregator": "trimmed_mean", "f": 2},
                                       {"aggregator": {"name": "trimmed_mean", "f": 2}}])
def test_a_members_keys_go_beside_it_or_inside_it(algorithm):
    cfg = parse_config({"num_nodes": 8, "topology": {"graph": "complete"}, "algorithm": algorithm})
    assert cfg.algorithm.aggregator.name == "trimmed_mean" and cfg.algorithm.aggregator.f == 2
    assert to_dict(cfg)["algorithm"]["f"] == 2  # saved flat, read back the same
    assert parse_config(to_dict(cfg)) == cfg


def test_a_key_given_beside_and_inside_its_member_is_refused():
    with pytest.raises(ConfigError, match="algorithm.f: given twice"):
        parse_config({"algorithm": {"aggregator": {"name": "trimmed_mean", "f": 1}, "f": 2}})


def test_set_switches_members_and_drops_only_the_old_members_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"partition": "dirichlet", "alpha": 0.3, "min_samples_per_node": 3},
                                    "algorithm": {"name": "diloco", "outer_lr": 0.5, "lr": 0.05}}))
    cfg = load_config(path, ["data.partition=shards", "algorithm.name=fedavg", "algorithm.fraction=0.5"])
    assert cfg.data.partition.name == "shards" and cfg.data.min_samples_per_node == 3  # a section key stays
    assert cfg.algorithm.name == "fedavg" and cfg.algorithm.lr == 0.05 and cfg.algorithm.fraction == 0.5
    with pytest.raises(ConfigError, match="algorithm.outer_lr: not a key of algorithm fedavg"):
        load_config(path, ["algorithm.name=fedavg", "algorithm.outer_lr=0.5"])


def test_one_tracker_may_be_named_without_a_list():
    """Issue 38 (8): ``tracking: tensorboard`` was refused (a list was required)."""
    import importlib.util

    from peerlearn import runner
    from peerlearn.config import ConfigError, parse_config

    cfg = parse_config({"tracking": "tensorboard"})
    assert cfg.tracking == ["tensorboard"]
    if importlib.util.find_spec("tensorboard") is None:  # what stops it is the missing extra, named by the runner
        with pytest.raises(ConfigError, match=r"tracking: tensorboard needs its extra"):
            runner.check(cfg)
    with pytest.raises(ConfigError, match="tracking"):
        parse_config({"tracking": "tensorbored"})
