"""Terminal tables of a run's or several runs' final metrics (``peerlearn run``, ``compare``)."""

from __future__ import annotations

import math

from rich.markup import escape
from rich.table import Table


def _fmt(value: float, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):  # e.g. epsilon with clipping and no noise
        return "∞" if value > 0 else "-∞"
    return {"acc": f"{value:.4f}", "mb": f"{value / 1e6:,.2f}", "s": f"{value:.1f}",
            "sci": f"{value:.3g}", "int": f"{int(value)}"}[kind]


_TABLE_COLUMNS = [("rounds", "round", "int"), ("acc mean", "acc_mean", "acc"), ("acc min", "acc_min", "acc"),
                  ("acc max", "acc_max", "acc"), ("acc avg model", "acc_avg_model", "acc"),
                  ("train loss", "loss_mean", "sci"), ("consensus dist", "consensus_distance", "sci"),
                  ("MB sent/node", "bytes_sent_per_node", "mb"),
                  ("sim time s", "sim_time_s", "s"), ("  compute / comm / wait", "sim_split", "split"),
                  ("staleness (async)", "staleness_mean", "sci"), ("epsilon (privacy)", "epsilon", "sci"),
                  ("wall s", "wall_time_s", "s")]


def _summary_table(title: str, runs: dict[str, dict]) -> Table:
    """Metrics as rows, runs as columns: stays readable in an 80-column terminal."""
    table = Table(title=escape(title))  # names are the user's text, not rich markup
    table.add_column("metric (final round)")
    for name in runs:
        table.add_column(escape(str(name)), justify="right")
    for header, key, kind in _TABLE_COLUMNS:
        if kind == "split":  # where simulated time went, per node on average
            table.add_row(header, *(" / ".join(_fmt(final.get(k, math.nan), "s") for k in
                                               ("sim_compute_s", "sim_comm_s", "sim_wait_s")) for final in runs.values()))
        else:
            cells = [_fmt(final.get(key, math.nan), kind) for final in runs.values()]
            if key not in ("staleness_mean", "epsilon") or any(c != "-" for c in cells):  # only where measured
                table.add_row(header, *cells)
    return table
