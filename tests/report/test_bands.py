"""The sweep figure (``plot_bands``) and ``peerlearn compare``'s (``plot_compare``): an accuracy is drawn on [0, 1],
a loss or a generalization gap on its own range (a test loss of 2 would otherwise sit above the frame)."""

from __future__ import annotations

import pandas as pd
import pytest

from peerlearn.report import plots


def _frame(metric: str, values: list[float]) -> pd.DataFrame:
    return pd.DataFrame([{"cell": "a", "run": f"r{s}", "round": r, "bytes_sent_per_node": 1e6 * (r + 1),
                          metric: v + 0.01 * s} for s in range(2) for r, v in enumerate(values)])


@pytest.mark.parametrize("metric, values, bounded", [("acc_mean", [0.1, 0.5, 0.8], True), ("heads_acc_mean", [0.1, 0.3, 0.6], True),
                                                     ("test_loss_mean", [2.3, 1.9, 2.6], False),
                                                     ("gap_acc_mean", [-0.01, 0.05, 0.1], False),
                                                     ("gap_loss_mean", [0.0, 0.4, 1.7], False)])
def test_the_axis_holds_the_curve(tmp_path, monkeypatch, metric, values, bounded):
    made = []
    real = plots.subplots
    monkeypatch.setattr(plots, "subplots", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    plots.plot_bands(_frame(metric, values), "cell", [tmp_path / "f.png"], metric=metric)
    assert (tmp_path / "f.png").is_file()
    fig, axes = made[0]
    low, high = axes[0].get_ylim()
    assert low <= min(values) and high >= max(values) + 0.01
    assert ((low, high) == (0.0, 1.0)) == bounded
    assert axes[0].get_ylabel() == plots._METRIC_LABELS.get(metric, metric)


@pytest.mark.parametrize("metric, values, bounded", [("acc_mean", [0.1, 0.5, 0.8], True),
                                                     ("test_loss_mean", [2.3, 1.9, 2.6], False)])
def test_the_compare_figure_holds_the_curve(tmp_path, monkeypatch, metric, values, bounded):
    made = []
    real = plots.subplots
    monkeypatch.setattr(plots, "subplots", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    rows = [{"round": r, metric: v, "bytes_sent_per_node": 1e6 * (r + 1), "consensus_distance": 0.1}
            for r, v in enumerate(values)]
    plots.plot_compare({"run": rows}, tmp_path / "c.png", metric=metric)
    assert (tmp_path / "c.png").is_file()
    _, axes = made[0]
    for ax in axes[:2]:
        low, high = ax.get_ylim()
        assert low <= min(values) and high >= max(values)
        assert ((low, high) == (0.0, 1.0)) == bounded
