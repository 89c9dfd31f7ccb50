"""The attack x defence matrix (``peerlearn matrix``): one run per (attack, aggregator) pair of a base config,
each run by the simulator as ``peerlearn run`` runs it (its outcome through :func:`peerlearn.runner.outcome`:
a diverged cell is recorded as such and the matrix goes on), into ``matrix.csv`` and ``matrix.png``
(:mod:`peerlearn.report.matrix` draws it).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Callable

from peerlearn import runner
from peerlearn.paths import drop_links

COLUMNS = ["attack", "defense", "acc_mean", "acc_min", "attack_success", "wall_time_s", "status"]


def parse_member(spec: str, selector: str = "aggregator", flag: str = "--defenses") -> dict:
    """``"bulyan:f=1,tau=0.5"`` -> ``{"aggregator": "bulyan", "f": 1, "tau": 0.5}`` (algorithm keys); with
    ``selector="attack"``, ``"alie:z=auto"`` -> ``{"attack": "alie", "z": "auto"}`` (threat keys)."""
    import yaml

    from peerlearn.config import ConfigError

    name, _, rest = spec.partition(":")
    keys = {selector: name}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"config error: {flag} {spec}: expected name:key=value,key=value")
        keys[key.strip()] = yaml.safe_load(value)
    return keys


def matrix_configs(base: dict, attacks: list[str], defenses: list[str], base_cfg=None) -> dict:
    """Every pair's validated config, ``{(attack, defence): cfg}`` (a ConfigError naming the first bad one).

    ``base_cfg`` (the validated ``base``) lets a cell drop the keys of the base's own aggregator and attack.
    ``"none"`` is the no-attack row: the same Byzantine nodes behave honestly, so every row measures the same
    honest set. A defence is an aggregator name, optionally with its own algorithm keys (:func:`parse_member`);
    an attack likewise with its threat keys (``alie:z=auto``).
    """
    from peerlearn.config import parse_config, without_member_keys

    configs = {}
    for attack in attacks:
        for defense in defenses:
            threat = dict(base.get("threat") or {})
            algorithm = dict(base.get("algorithm") or {})
            if base_cfg is not None:  # a cell names its own attack and aggregator: drop the base's keys of theirs
                threat = without_member_keys(threat, base_cfg.threat.attack)
                algorithm = without_member_keys(algorithm, getattr(base_cfg.algorithm, "aggregator", None))
            threat.update({"attack": None} if attack == "none" else parse_member(attack, "attack", "--attacks"))
            algorithm.update(parse_member(defense))
            configs[attack, defense] = parse_config({**base, "threat": threat, "algorithm": algorithm})
    return configs


def run_matrix(base: dict, attacks: list[str], defenses: list[str], out_dir: Path,
               on_cell: Callable[[str, str, dict], None] | None = None, base_cfg=None) -> list[dict]:
    """Run every (attack, defence) pair of ``base`` (a config dict; see :func:`matrix_configs`).

    Every pair is validated and built before any runs (one-line errors, nothing written); the dataset is
    loaded once and shared. Writes ``matrix.csv`` (a row per pair, appended as each finishes, with the
    cell's status: ``completed`` or ``diverged``, whose row holds its last evaluation) and ``matrix.png``.
    Ctrl-C stops the matrix with the finished rows kept (KeyboardInterrupt goes on to the caller).
    """
    from peerlearn.build import build, build_dataset
    from peerlearn.engines import simulate
    from peerlearn.report.matrix import plot_matrix

    out_dir = Path(out_dir)
    configs = matrix_configs(base, attacks, defenses, base_cfg)
    dataset = build_dataset(next(iter(configs.values())))
    built = {key: build(cfg, dataset) for key, cfg in configs.items()}
    out_dir.mkdir(parents=True, exist_ok=True)  # only once every pair is valid and built
    drop_links(out_dir)  # nothing is written through a link planted in a reused folder
    rows = []
    with open(out_dir / "matrix.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for (attack, defense), b in built.items():
            kept: list[dict] = []
            status = runner.outcome(lambda: simulate(b, on_eval=kept.append))
            if status == "interrupted":
                raise KeyboardInterrupt
            last = kept[-1] if kept else {}
            row = {"attack": attack, "defense": defense, "status": status,
                   **{k: last.get(k, math.nan) for k in ("acc_mean", "acc_min", "attack_success", "wall_time_s")}}
            writer.writerow(row)
            f.flush()
            rows.append(row)
            if on_cell:
                on_cell(attack, defense, row)
    plot_matrix(rows, attacks, defenses, out_dir / "matrix.png")
    return rows
