"""PNG plots of one run and overlays of several (matplotlib, no display needed)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from matplotlib.figure import Figure  # not pyplot: no GUI state, and 0.15 s less start-up


def subplots(*grid: int, figsize: tuple[float, float]):
    """``(figure, axes)`` like ``pyplot.subplots``, on a figure no GUI backend or global state holds."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid)


def _col(rows: list[dict], key: str) -> list[float]:
    return [r.get(key, math.nan) for r in rows]


def _acc_vs_mb(rows: list[dict], metric: str = "acc_mean") -> tuple[list[float], list[float]]:
    """(MB sent per node, accuracy) for the rows after the first byte was sent (log-scale friendly)."""
    pairs = [(r["bytes_sent_per_node"] / 1e6, r.get(metric, math.nan)) for r in rows
             if r.get("bytes_sent_per_node", 0) > 0]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _plain(text: str) -> str:
    """A user's text as a matplotlib title: ``$`` would start mathtext (and fail on unbalanced input)."""
    return str(text).replace("$", r"\$")


def plot_run(rows: list[dict], out_dir: Path, title: str = "") -> list[Path]:
    """``accuracy.png`` (vs round), ``accuracy_vs_bytes.png`` and ``consensus.png``."""
    title = _plain(title)
    out_dir = Path(out_dir)
    rounds = _col(rows, "round")
    written = []

    fig, ax = subplots(figsize=(6.4, 4.2))
    ax.fill_between(rounds, _col(rows, "acc_min"), _col(rows, "acc_max"), alpha=0.2, label="node min-max")
    ax.plot(rounds, _col(rows, "acc_mean"), label="node mean")
    ax.plot(rounds, _col(rows, "acc_avg_model"), "--", label="averaged model")
    alive = [v for v in _col(rows, "alive_nodes") if not math.isnan(v)]
    if alive and min(alive) < max(alive):  # faults took nodes down: show the nodes that were up
        ax.plot(rounds, _col(rows, "acc_alive_mean"), ":", label="alive-node mean")
        ax2 = ax.twinx()
        ax2.step(rounds, _col(rows, "alive_nodes"), where="post", color="grey", alpha=0.5)
        ax2.set(ylabel="alive nodes", ylim=(0, max(alive) * 1.05))
    ax.set(xlabel="round", ylabel="test accuracy", title=title, ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    written.append(_save(fig, out_dir / "accuracy.png"))

    fig, ax = subplots(figsize=(6.4, 4.2))
    mb, acc = _acc_vs_mb(rows)
    if mb:
        ax.plot(mb, acc, marker=".")
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no bytes sent (no communication)", ha="center", transform=ax.transAxes)
    ax.set(xlabel="MB sent per node", ylabel="mean node test accuracy", title=title, ylim=(0, 1))
    ax.grid(alpha=0.3)
    written.append(_save(fig, out_dir / "accuracy_vs_bytes.png"))

    fig, ax = subplots(figsize=(6.4, 4.2))
    ax.plot(rounds, _col(rows, "consensus_distance"), marker=".")
    if any(v > 0 for v in _col(rows, "consensus_distance")):
        ax.set_yscale("log")
    ax.set(xlabel="round", ylabel="consensus distance (1/N) sum ||x_i - x_bar||^2", title=title)
    ax.grid(alpha=0.3)
    written.append(_save(fig, out_dir / "consensus.png"))
    return written


def plot_compare(runs: dict[str, list[dict]], out_path: Path, metric: str = "acc_mean", x: str = "round") -> Path:
    """One figure, three panels: ``metric`` vs ``x`` (round or sim_time_s), ``metric`` vs bytes, consensus distance."""
    fig, axes = subplots(1, 3, figsize=(16, 4.4))
    silent = []
    label = _METRIC_LABELS.get(metric, metric)
    for name, rows in runs.items():
        if x != "round":  # seconds span decades across sync and async runs, epsilon across noise levels: log axis
            rows = [r for r in rows if 0 < r.get(x, math.nan) < math.inf]
        line, = axes[0].plot(_col(rows, x), _col(rows, metric), label=name)
        mb, acc = _acc_vs_mb(rows, metric)
        if mb:
            axes[1].plot(mb, acc, label=name, color=line.get_color())
        else:
            silent.append(name)
        axes[2].plot(_col(rows, x), [max(v, 1e-12) for v in _col(rows, "consensus_distance")], label=name)
    xlabel = {"round": "round", "sim_time_s": "simulated seconds (log)",
              "epsilon": "privacy spent: epsilon of the worst node (log)"}.get(x, x)
    axes[0].set(xlabel=xlabel, ylabel=label)
    if x != "round":
        axes[0].set_xscale("log")
        axes[2].set_xscale("log")
    axes[1].set(xlabel="MB sent per node", ylabel=label)
    if _fraction(metric):  # losses and gaps keep their own range
        axes[0].set_ylim(0, 1)
        axes[1].set_ylim(0, 1)
    axes[1].set_xscale("log")
    if silent:
        axes[1].set_title(f"sent nothing: {', '.join(silent)}", fontsize=9)
    axes[2].set(xlabel=xlabel, ylabel="consensus distance (floored at 1e-12)", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, Path(out_path))


_METRIC_LABELS = {"acc_mean": "mean node test accuracy", "acc_alive_mean": "mean alive-node test accuracy",
                  "acc_avg_model": "averaged-model test accuracy", "acc_min": "worst node test accuracy",
                  "train_acc_mean": "mean node training accuracy (eval_train)",
                  "test_loss_mean": "mean node test cross-entropy",
                  "gap_acc_mean": "generalization gap: training minus test accuracy",
                  "gap_loss_mean": "generalization gap: test minus training cross-entropy"}


def _fraction(metric: str) -> bool:
    """A metric between 0 and 1 (an accuracy, an attack's success; not a gap, which can be negative): its axis is
    drawn from 0 to 1."""
    return ("acc" in metric and not metric.startswith("gap")) or metric == "attack_success"


def plot_bands(df, group: str, out_paths: list[Path], metric: str = "acc_mean", x: str = "round",
               title: str = "") -> list[Path]:
    """Mean curves with +-1 std bands over the runs of each group (``df`` from :func:`peerlearn.results.load`;
    ``group`` a column: ``cell``, or any grid or config key): ``metric`` against ``x`` and against MB sent per
    node. Written to every path of ``out_paths`` (PNG for screens, PDF or SVG for papers)."""
    fig, axes = subplots(1, 2, figsize=(13, 4.6))
    label = _METRIC_LABELS.get(metric, metric)
    for value, part in df.groupby(group, sort=False, dropna=False):
        # runs are aligned by round; another x (simulated seconds) is its mean over the runs at that round
        stats = part.groupby("round")[list(dict.fromkeys([metric, "bytes_sent_per_node", x]))].agg(["mean", "std"])
        if x != "round":  # seconds and epsilons span decades: a log axis, without the start at 0
            stats = stats[stats[(x, "mean")] > 0]
        xs = stats.index.to_numpy(dtype=float) if x == "round" else stats[(x, "mean")].to_numpy(dtype=float)
        mean, std = stats[(metric, "mean")].to_numpy(), stats[(metric, "std")].fillna(0.0).to_numpy()
        runs = int(part["run"].nunique()) if "run" in part else 1
        name = f"{value} (n={runs})" if group in ("cell", "label", "run", "variant") else f"{group}={value} (n={runs})"
        line, = axes[0].plot(xs, mean, label=name)
        axes[0].fill_between(xs, mean - std, mean + std, alpha=0.2, color=line.get_color(), linewidth=0)
        mb = stats[("bytes_sent_per_node", "mean")].to_numpy() / 1e6
        keep = mb > 0
        if keep.any():
            axes[1].plot(mb[keep], mean[keep], color=line.get_color(), label=name)
            axes[1].fill_between(mb[keep], (mean - std)[keep], (mean + std)[keep], alpha=0.2,
                                 color=line.get_color(), linewidth=0)
    axes[0].set(xlabel={"round": "round", "sim_time_s": "simulated seconds (log; mean over runs)",
                        "epsilon": "privacy spent: epsilon of the worst node (log; mean over runs)"}.get(x, x),
                ylabel=label)
    if x != "round":
        axes[0].set_xscale("log")
    axes[1].set(xlabel="MB sent per node (log)", ylabel=label, xscale="log")
    if _fraction(metric):  # losses and gaps keep their own range
        axes[0].set_ylim(0, 1)
        axes[1].set_ylim(0, 1)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="mean ± 1 std over runs", title_fontsize=8)
    if title:
        fig.suptitle("\n".join(textwrap.wrap(_plain(title), 120)))  # a long title (a sweep's --set) wraps
    fig.tight_layout()
    written = []
    for path in out_paths:
        fig.savefig(path, dpi=130)
        written.append(Path(path))
    return written


def _log_labels(fig) -> None:
    """Readable, non-overlapping tick labels on every log axis: plain numbers (0.01, 30, 2e+06) at the powers
    of ten (at most six), also at 2x and 5x them where the axis spans under two decades, and a few evenly
    spaced values where it spans under one (matplotlib's default labels every minor tick of a one-decade
    axis, and 3x10^0 runs into 4x10^0)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() != "log":
                continue
            lo, hi = sorted(v for v in axis.get_view_interval())
            decades = math.log10(hi / lo) if lo > 0 else math.inf
            if decades < 1:  # under a decade the powers of ten are off the axis: a few evenly spaced values
                axis.set_major_locator(MaxNLocator(4))
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(NullFormatter())
                continue
            few = decades < 2
            axis.set_major_locator(LogLocator(base=10, numticks=6))  # wide axes: every other decade or fewer
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)))
            axis.set_minor_formatter(FuncFormatter(lambda v, _, few=few: f"{v:g}" if few and _mantissa(v) in (2, 5)
                                                   else ""))


def _mantissa(v: float) -> int | None:
    """The leading digit of ``v`` when ``v`` is that digit times a power of ten (2 for 0.02), else None."""
    if v <= 0:
        return None
    m = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return round(m) if abs(m - round(m)) < 1e-6 else None


def _save(fig, path: Path) -> Path:
    _log_labels(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_matrix_heat(matrix, out_path: Path, title: str = "") -> Path:
    """A node x node matrix (a learned cooperation graph: row i, node i's weights) as a heat map."""
    fig, ax = subplots(1, 1, figsize=(5.2, 4.4))
    image = ax.imshow(matrix, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax)
    ax.set_xlabel("node j")
    ax.set_ylabel("node i")
    ax.set_title(title)
    return _save(fig, out_path)


def plot_swarm(peers: dict[str, list[dict]], swarm: list[dict], out_path: Path, title: str = "") -> Path:
    """A p2p swarm on wall-clock time: every peer's mean node accuracy (thin) and the swarm's over its live
    peers (thick), and how many peers reported each evaluated round."""
    fig, (acc, alive) = subplots(1, 2, figsize=(11, 4))
    for name, rows in peers.items():
        acc.plot(_col(rows, "wall_time_s"), _col(rows, "acc_mean"), lw=1, alpha=0.6, label=name)
    acc.plot(_col(swarm, "wall_time_s"), _col(swarm, "acc_mean"), lw=2.5, color="black", label="swarm")
    acc.set(xlabel="wall time (s)", ylabel="mean node test accuracy", ylim=(0, 1), title=_plain(title))
    acc.legend(fontsize=8)
    acc.grid(alpha=0.3)
    alive.step(_col(swarm, "wall_time_s"), _col(swarm, "peers"), where="post", color="black")
    alive.set(xlabel="wall time (s)", ylabel="peers reporting", ylim=(0, max([1, *_col(swarm, "peers")]) + 0.5))
    alive.grid(alpha=0.3)
    return _save(fig, out_path)
