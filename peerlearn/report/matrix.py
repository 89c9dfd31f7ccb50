"""The attack-by-defence matrix's heatmap (the runs are :mod:`peerlearn.matrix`'s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from peerlearn.report.plots import subplots


def plot_matrix(rows: list[dict], attacks: list[str], defenses: list[str], path: Path) -> Path:
    """Heatmaps of the honest nodes' mean and min accuracy, an attack per row and a defence per column (a
    diverged cell is marked)."""
    fig, axes = subplots(1, 2, figsize=(2.0 + 1.3 * len(defenses) * 2, 1.5 + 0.5 * len(attacks)))
    for ax, key in zip(axes, ("acc_mean", "acc_min")):
        grid = np.full((len(attacks), len(defenses)), np.nan)
        diverged = np.full(grid.shape, "", dtype=object)
        for r in rows:
            at = attacks.index(r["attack"]), defenses.index(r["defense"])
            grid[at] = r[key]
            diverged[at] = "*" if r.get("status") == "diverged" else ""
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn")
        ax.set_xticks(range(len(defenses)), defenses, rotation=35, ha="right")
        ax.set_yticks(range(len(attacks)), attacks)
        for i in range(len(attacks)):
            for j in range(len(defenses)):
                ax.text(j, i, f"{grid[i, j]:.2f}{diverged[i, j]}", ha="center", va="center", fontsize=8)
        ax.set_title(f"honest {key.replace('_', ' ')}")
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
