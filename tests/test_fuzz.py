"""Fuzz the shipped configs (issue 19): every mutation either runs (exit 0), stops on divergence with one
line, or is refused with one line and exit 2 with nothing written; never a traceback.

A seeded generator mutates one thing per case: a key set to a value of another type or out of range,
a key deleted, an unknown key added, a member of another family named, a section replaced by a scalar.
A quarter of the valid mutations run two rounds, the others are validated (which builds every part); sizes
that no one means (hours of work) are config errors, so every case is bounded. The fast slice (40) runs in
``make test``; the slow suite runs 500 more, and 16 that may load the heavy datasets.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import yaml

from peerlearn import cli
from peerlearn.spec import REGISTRIES

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
HEAVY = ("fashion_mnist", "shakespeare")  # load for seconds: only in the slow slice
VALUES = [-1, 0, 1, 2, 3.5, 0.5, 1e9, -1e9, math.nan, math.inf, 10**20, "", "x", "ring", None, [], [1, 2],
          [0], {}, {"a": 1}, True, False, "1e3", [[1]], "../nowhere", 2**63]


def _paths(data: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key, value in data.items():
        out.append(prefix + (key,))
        if isinstance(value, dict):
            out += _paths(value, prefix + (key,))
    return out


def mutate(data: dict, rng: random.Random) -> tuple[dict, str]:
    """One mutation of ``data`` (a config mapping) and what it was."""
    data = yaml.safe_load(yaml.safe_dump(data))  # a deep copy
    paths = _paths(data)
    op = rng.choice(["set", "set", "set", "delete", "unknown", "member", "scalar_section"])
    path = rng.choice(paths)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    if op == "set":
        parent[path[-1]] = rng.choice(VALUES)
    elif op == "delete":
        del parent[path[-1]]
    elif op == "unknown":
        parent[f"fuzz_{rng.randrange(1000)}"] = rng.choice(VALUES)
    elif op == "member":  # a name of any family, in any selector
        family = rng.choice(list(REGISTRIES.values()))
        section, key = rng.choice([r.where.split(".") for r in REGISTRIES.values()])
        target = data.setdefault(section, {})
        if isinstance(target, dict):
            target[key] = rng.choice(list(family))
        path = (section, key)
    else:
        section = rng.choice(["topology", "data", "model", "algorithm", "threat", "faults", "clock", "privacy"])
        data[section] = rng.choice([1, "x", [1], None])
        path = (section,)
    return data, f"{op} {'.'.join(map(str, path))}"


def _cap(data: dict) -> dict:
    """Keep a valid mutation short: two rounds, a small test set (values the fuzz did not touch)."""
    if isinstance(data.get("num_rounds"), int) and data["num_rounds"] > 2:
        data["num_rounds"] = 2
    if isinstance(data.get("eval_every"), int) and data["eval_every"] > 1:
        data["eval_every"] = 1
    if isinstance(data.get("data"), dict) and "test_samples" not in data["data"]:
        data["data"]["test_samples"] = 100
    return data


def run_case(seed: int, tmp_path: Path, capsys, heavy: bool) -> None:
    rng = random.Random(seed)
    pool = [p for p in CONFIGS if heavy or not any(h in p.read_text() for h in HEAVY)]
    source = rng.choice(pool)
    data, what = mutate(yaml.safe_load(source.read_text()), rng)
    if heavy is False and any(h in yaml.safe_dump(data) for h in HEAVY):
        return  # the mutation named a heavy dataset: left to the slow slice
    case = tmp_path / f"case{seed}"
    case.mkdir()
    path = case / "config.yaml"
    path.write_text(yaml.safe_dump(_cap(data)))
    out = case / "run"
    capsys.readouterr()
    run = seed % 4 == 0  # a quarter run two rounds; the others are validated (all checks but training)
    code = cli.main(["run", str(path), "--out", str(out), "--quiet"] if run else ["validate", str(path)])
    err = capsys.readouterr().err.strip()
    label = f"seed {seed}: {source.name}: {what}"
    assert "traceback saved" not in err and "Traceback" not in err, f"{label}: {err}"
    if code == 0:
        return
    assert len(err.splitlines()) == 1, f"{label}: {err}"
    if code == 1:  # a run that diverged stops with one line and keeps its rows
        assert "diverged" in err, f"{label}: {err}"
        return
    assert code == 2 and err.startswith(("config error:", "error:")), f"{label}: code {code}: {err}"
    assert not out.exists(), f"{label}: a refused config wrote {sorted(p.name for p in out.iterdir())}"


@pytest.mark.parametrize("seed", range(40))
def test_fuzzed_configs_run_or_are_one_line(seed, tmp_path, capsys):
    run_case(seed, tmp_path, capsys, heavy=False)


@pytest.mark.slow
@pytest.mark.parametrize("first", [1000, 1250], ids=["500-a", "500-b"])  # two halves: xdist spreads them
def test_fuzzed_configs_500(tmp_path, capsys, first):
    for seed in range(first, first + 250):
        run_case(seed, tmp_path, capsys, heavy=False)


@pytest.mark.slow
def test_fuzzed_heavy_configs(tmp_path, capsys):
    """Mutations of the Fashion-MNIST and Shakespeare configs (each loads for seconds): fewer of them."""
    for seed in range(2000, 2016):
        run_case(seed, tmp_path, capsys, heavy=True)
