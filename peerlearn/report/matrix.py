"""The attack-by-defence matrix: one run per (attack, aggregator) pair, a table and a heatmap."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from peerlearn.paths import drop_links  # noqa: E402


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


def run_matrix(base: dict, attacks: list[str], defenses: list[str], out_dir: Path,
               on_cell: Callable[[str, str, dict], None] | None = None, base_cfg=None) -> list[dict]:
    """Run every (attack, defence) pair of ``base`` (a config dict).

    ``base_cfg`` (the validated ``base``) lets a cell drop the keys of the base's own aggregator and attack.
    ``"none"`` is the no-attack row: the same Byzantine nodes behave honestly, so every row
    measures the same honest set. A defence is an aggregator name, optionally with its own
    algorithm keys (:func:`parse_member`); an attack likewise with its threat keys (``alie:z=auto``).

    The dataset is loaded once and shared by all runs. Writes ``matrix.csv`` (a row per pair,
    appended as each finishes) and ``matrix.png`` (heatmaps of honest mean and min accuracy).
    """
    from peerlearn.build import build, build_dataset
    from peerlearn.config import parse_config, without_member_keys
    from peerlearn.engines import simulate

    out_dir = Path(out_dir)
    configs = {}
    for attack in attacks:  # validate every pair before running any (one-line errors, nothing lost)
        for defense in defenses:
            threat = dict(base.get("threat") or {})
            algorithm = dict(base.get("algorithm") or {})
            if base_cfg is not None:  # a cell names its own attack and aggregator: drop the base's keys of theirs
                threat = without_member_keys(threat, base_cfg.threat.attack)
                algorithm = without_member_keys(algorithm, getattr(base_cfg.algorithm, "aggregator", None))
            threat.update({"attack": None} if attack == "none" else parse_member(attack, "attack", "--attacks"))
            algorithm.update(parse_member(defense))
            configs[attack, defense] = parse_config({**base, "threat": threat, "algorithm": algorithm})
    dataset = build_dataset(next(iter(configs.values())))
    built = {key: build(cfg, dataset) for key, cfg in configs.items()}
    out_dir.mkdir(parents=True, exist_ok=True)  # only once every pair is valid and built
    drop_links(out_dir)  # nothing is written through a link planted in a reused folder
    rows = []
    with open(out_dir / "matrix.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["attack", "defense", "acc_mean", "acc_min", "attack_success",
                                               "wall_time_s"])
        writer.writeheader()
        for (attack, defense), b in built.items():
            final = simulate(b)[-1]
            row = {"attack": attack, "defense": defense, **{k: final[k] for k in
                                                            ("acc_mean", "acc_min", "attack_success", "wall_time_s")}}
            writer.writerow(row)
            f.flush()
            rows.append(row)
            if on_cell:
                on_cell(attack, defense, row)
    plot_matrix(rows, attacks, defenses, out_dir / "matrix.png")
    return rows


def plot_matrix(rows: list[dict], attacks: list[str], defenses: list[str], path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(2.0 + 1.3 * len(defenses) * 2, 1.5 + 0.5 * len(attacks)))
    for ax, key in zip(axes, ("acc_mean", "acc_min")):
        grid = np.full((len(attacks), len(defenses)), np.nan)
        for r in rows:
            grid[attacks.index(r["attack"]), defenses.index(r["defense"])] = r[key]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn")
        ax.set_xticks(range(len(defenses)), defenses, rotation=35, ha="right")
        ax.set_yticks(range(len(attacks)), attacks)
        for i in range(len(attacks)):
            for j in range(len(defenses)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title(f"honest {key.replace('_', ' ')}")
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
