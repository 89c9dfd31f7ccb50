"""``peerlearn list``, ``compare`` (runs, or sweeps with bands) and ``matrix``."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from peerlearn.cli.common import console
from peerlearn.runner import check, compute_setup
from peerlearn.report.tables import _fmt, _summary_table


def cmd_list(args) -> int:
    import json

    from peerlearn.config import load_plugins
    from peerlearn.report.catalog import as_json, catalog, render

    if args.family == "configs":
        return _list_configs(args.json)
    load_plugins(args.plugin)
    entries = catalog(args.family, own_only=args.family is None and not args.json)
    if args.json:
        print(json.dumps(as_json(entries), indent=1, default=repr))
    else:
        render(console, entries, detailed=args.family is not None)
    return 0


def _list_configs(as_json: bool) -> int:
    """The configs bundled with peerlearn (``peerlearn run NAME``) and the declared reproductions."""
    import json

    from peerlearn import bundled

    def about(path: Path) -> str:  # the file's first comment line
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                return line.lstrip("# ").strip()
        return ""
    found = {"configs": bundled.configs(), "reproductions": bundled.reproductions()}
    if as_json:
        print(json.dumps({kind: {name: {"path": str(p), "about": about(p)} for name, p in files.items()}
                          for kind, files in found.items()}, indent=1))
        return 0
    for kind, files in found.items():
        command = "peerlearn run NAME" if kind == "configs" else "peerlearn reproduce NAME"
        table = Table(title=f"bundled {kind} ({command}; peerlearn init DIR copies the quickstart to edit)")
        table.add_column("name")
        table.add_column("what it runs")
        for name, path in files.items():
            table.add_row(name, about(path))
        console.print(table)
    return 0


def cmd_compare(args) -> int:
    from peerlearn.report import plot_compare, read_run

    if args.group_by or any((Path(p) / "sweep.json").is_file() for p in args.runs):
        return _compare_bands(args)
    runs, finals = {}, {}
    for path, label in zip(args.runs, run_labels(args.runs)):
        summary, rows = read_run(path)
        runs[label], finals[label] = rows, summary.get("final", rows[-1] if rows else {})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_compare(runs, out, args.metric, args.x)
    console.print(_summary_table("comparison (final evaluated round)", finals))
    if args.target is not None:
        from peerlearn.metrics import first_reaching

        table = Table(title=f"first evaluated round with {args.target_metric} >= {args.target}")
        for col in ("run", "round", "MB sent per node", "simulated time (s)", "wall time (s)"):
            table.add_column(col, justify="left" if col == "run" else "right")
        for name, rows in runs.items():
            hit = first_reaching(rows, args.target, args.target_metric)
            table.add_row(name, *(("never", "-", "-", "-") if hit is None else (
                str(int(hit["round"])), _fmt(hit["bytes_sent_per_node"], "mb"),
                _fmt(hit.get("sim_time_s", math.nan), "s"), f"{hit['wall_time_s']:.1f}")))
        console.print(table)
    console.print(f"plot: {out}", markup=False)
    return 0


def run_labels(paths: list[str]) -> list[str]:
    """A label per run folder: its name, or as many of its last path components as make it unique among the
    others (``lr=0.1/seed0`` and ``lr=0.2/seed0``, never one ``seed0`` and one full path)."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(pp[-d:]) for pp, d in zip(parts, depth)]
        clash = {label for label in labels if labels.count(label) > 1}
        grow = [i for i, label in enumerate(labels) if label in clash and depth[i] < len(parts[i])]
        if not grow:
            return labels
        for i in grow:
            depth[i] += 1


def _compare_bands(args) -> int:
    """``compare`` on sweeps (or with ``--group-by``): mean curves with +-1 std bands, one per cell or per
    value of the key, and a table of the final metrics as mean +- std."""
    from peerlearn.config import ConfigError
    from peerlearn.report import plot_bands
    from peerlearn.results import load, load_summary

    df = load(args.runs)
    group = args.group_by or ("label" if "label" in df else "run")
    if group not in df:
        keys = sorted(c for c in df.columns if "." in c or c in ("seed", "cell", "variant", "name"))
        raise ConfigError(f"config error: --group-by {group}: not a column of these runs; e.g. {', '.join(keys[:12])}")
    if args.metric not in df:
        raise ConfigError(f"config error: --metric {args.metric}: not a column of these runs")
    df[group] = df[group].fillna("-")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_bands(df, group, [out], metric=args.metric, x=args.x)
    finals = load_summary(args.runs)
    finals[group] = finals[group].fillna("-")
    table = Table(title=f"final evaluated round by {group}: mean ± std over runs")
    table.add_column(group, overflow="fold")
    for col in ("runs", args.metric, "MB/node"):
        table.add_column(col, justify="right")
    for value, part in finals.groupby(group, sort=False):
        m, sd = part[args.metric].mean(), part[args.metric].std()
        mb = part["bytes_sent_per_node"].mean() / 1e6
        table.add_row(str(value), str(len(part)), f"{m:.4f}" + ("" if math.isnan(sd) else f" ± {sd:.4f}"), f"{mb:.2f}")
    console.print(table)
    console.print(f"plot: {out}", markup=False)
    return 0


def cmd_matrix(args) -> int:
    import yaml

    from peerlearn.aggregators import AGGREGATORS
    from peerlearn.attacks import ATTACKS
    from peerlearn.config import ConfigError, load_config, to_dict
    from peerlearn.report import choose_run_dir
    from peerlearn.matrix import run_matrix

    cfg = load_config(args.config, args.set)  # imports the config's plugins: their members are names here too
    check(cfg)
    compute_setup(cfg)
    attacks = ["none", *(a for a in args.attacks if a != "none")]
    for what, names, allowed in (("--attacks", attacks[1:], ATTACKS), ("--defenses", args.defenses, AGGREGATORS)):
        bad = [n for n in names if n.split(":")[0] not in allowed]
        if bad:
            raise ConfigError(f"config error: {what}: unknown {', '.join(bad)}; allowed: {', '.join(allowed)}")
    base = to_dict(cfg)
    if cfg.num_byzantine == 0:
        raise ConfigError("config error: threat.num_byzantine: the matrix needs Byzantine nodes "
                          "(e.g. --set threat.num_byzantine=10)")
    out = choose_run_dir(args.out, f"{cfg.name}-matrix", args.overwrite)
    table = Table(title=f"attack x defence: honest mean / min accuracy ({cfg.num_byzantine} Byzantine of "
                        f"{cfg.num_nodes}, {cfg.topology.graph.name})")
    total = len(attacks) * len(args.defenses)
    done = []

    def on_cell(attack, defense, row):
        done.append(row)
        if not args.quiet:
            console.print(f"[{len(done)}/{total}] {attack} vs {defense}: mean {row['acc_mean']:.3f}, "
                          f"min {row['acc_min']:.3f}" + (f" ({row['status']})" if row["status"] != "completed" else ""),
                          markup=False)

    rows = run_matrix(base, attacks, list(args.defenses), out, on_cell, cfg)
    table.add_column("attack \\ defence")
    for d in args.defenses:
        table.add_column(d, justify="right")
    for a in attacks:
        cells = {r["defense"]: r for r in rows if r["attack"] == a}
        table.add_row(a, *(f"{cells[d]['acc_mean']:.2f} / {cells[d]['acc_min']:.2f}"
                           + (" (diverged)" if cells[d]["status"] == "diverged" else "") for d in args.defenses))
    console.print(table)
    (out / "config.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    console.print(f"results: {out}/ (matrix.csv, matrix.png)", markup=False)
    return 0
