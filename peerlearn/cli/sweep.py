"""``peerlearn sweep`` and ``peerlearn reproduce``: plan, run and summarize sweeps (:mod:`peerlearn.sweep`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.table import Table

from peerlearn.cli.common import console, err_console, fail


def cmd_sweep(args) -> int:
    from peerlearn.config import ConfigError
    from peerlearn.sweep import load_sweep

    if not Path(args.config).is_file():
        raise ConfigError(f"config error: file {args.config!r} does not exist")
    code, _, _ = _run_sweep(args, load_sweep(args.config), Path(args.out) if args.out else
                            Path("runs") / f"{Path(args.config).stem}-sweep")
    return code


def _run_sweep(args, spec, out: Path):
    """Plan (every cell checked first), run and summarize the sweep of ``args.config``; returns
    ``(exit code, summary table or None, spec)``."""
    from peerlearn.config import ConfigError
    from peerlearn.resources import choose_threads
    from peerlearn.report.run_dir import read_summary
    from peerlearn.sweep import DONE, Sweep, default_workers, parse_grid, parse_seeds, plan, summarize

    updates = {"grid": {**spec.grid, **parse_grid(args.grid)}}
    if args.seeds is not None:
        updates["seeds"] = parse_seeds(args.seeds)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"config error: --workers: at least 1, got {args.workers}")
    for key in ("workers", "target", "launcher"):
        if getattr(args, key, None) is not None:
            updates[key] = getattr(args, key)
    if args.set and spec.title:  # the title of the figure and table says what --set changed from the file
        updates["title"] = f"{spec.title} [--set {', '.join(args.set)}]"
    spec = spec.model_copy(update=updates)
    cells = plan(args.config, spec, args.set)  # every cell checked before any run starts
    definition = json.loads(json.dumps({"config": str(Path(args.config).resolve()), "set": args.set,
                                        "seeds": spec.seeds, "grid": spec.grid,
                                        "variants": {k: v.model_dump() for k, v in spec.variants.items()}}))
    if spec.workers:
        workers, threads = spec.workers, max(1, choose_threads(None)[0] // spec.workers)
    else:
        workers, threads = default_workers(cells)
    sweep = Sweep(out, cells, definition, workers, threads, launcher=spec.launcher, slurm=spec.slurm)
    sweep.check_out(args.overwrite)
    left = sweep.refresh()
    if not args.quiet:
        resumed = "" if len(left) == len(cells) else f"; {len(cells) - len(left)} done before, {len(left)} left"
        resumed += " (the sweep in that folder grows: only its new runs and any unfinished ones run)" * sweep.grown
        if spec.launcher != "local":
            from peerlearn.launchers import where

            resumed += f"; {where(spec.launcher)}"
        console.print(f"sweep: {len(cells)} runs ({len({c.cell for c in cells})} cells x {len(spec.seeds)} seeds) "
                      f"into {out}/, {workers} at a time with {threads} thread{'s' * (threads > 1)} each{resumed}",
                      markup=False, highlight=False, soft_wrap=True)

    def on_done(cell, done, total):
        if args.quiet:
            return
        final = ""
        summary = read_summary(out / cell.dir) if cell.status == "completed" else None
        if summary is not None:
            final = f", acc {(summary.get('final') or {}).get('acc_mean', math.nan):.4f}"
        why = f": {cell.error}" if cell.error else ""
        console.print(f"[{done}/{total}] {cell.cell} seed {cell.seed}: {cell.status}{final} ({cell.wall_time_s} s)"
                      f"{why}", markup=False, highlight=False, soft_wrap=True)

    try:
        sweep.run(on_done)
    except KeyboardInterrupt:
        summarize(out, cells, spec)
        fail(f"interrupted: the runs done so far are kept; run the same command again to finish the sweep in {out}/")
        return 130, None, spec
    table = summarize(out, cells, spec, getattr(args, "group_by", None) or "cell")
    if not args.quiet:
        console.print(_sweep_table(table, spec))
        console.print(f"results: {out}/ (summary.csv, accuracy.png, accuracy.pdf, sweep.json, one run directory "
                      "per cell and seed)", markup=False, highlight=False, soft_wrap=True)
    failed = [c for c in cells if c.status not in DONE]
    for c in failed:
        err_console.print(f"{c.dir}: {c.status}: {c.error}", markup=False, highlight=False, soft_wrap=True)
    return (1 if failed else 0), table, spec


def cmd_reproduce(args) -> int:
    from peerlearn.config import ConfigError
    from peerlearn.sweep import load_sweep, markdown_table, reproduction_files

    files = reproduction_files()
    if args.list or args.name is None:
        if not files:
            raise ConfigError("config error: no configs/reproduce/ here and none bundled with peerlearn (a broken "
                              "install: pip install --force-reinstall peerlearn)")
        table = Table(title="reproductions (peerlearn reproduce NAME)")
        table.add_column("name")
        table.add_column("claim")
        for name, path in files.items():
            table.add_row(name, load_sweep(path).title or "")
        console.print(table)
        return 0
    path = files.get(args.name) or (Path(args.name) if Path(args.name).is_file() else None)
    if path is None:
        raise ConfigError(f"config error: reproduce {args.name!r}: unknown; known: {', '.join(files) or 'none'} "
                          "(or a path to a sweep file)")
    args.config, args.grid, args.target = str(path), [], None  # --set applies to every run
    out = Path(args.out) if args.out else Path("runs") / "reproduce" / path.stem
    code, table, spec = _run_sweep(args, load_sweep(path), out)
    if table is not None:
        text = f"{spec.title or path.stem}\n\n{markdown_table(table, spec)}"
        (out / "table.md").write_text(text)
        if not args.quiet:
            print(text, flush=True)
        console.print(f"table: {out}/table.md, figure: {out}/accuracy.png (and .pdf)", markup=False)
    return code


def _sweep_table(table, spec) -> Table:
    """The sweep's cells as rows: mean ± std over seeds of the final metrics."""
    from peerlearn.sweep import cell_label, mean_pm

    out = Table(title=spec.title or "sweep: final evaluated round, mean ± std over seeds")
    out.add_column("cell", overflow="fold", min_width=12)
    for col in ("ok", "acc mean", "acc min", "MB/node"):
        out.add_column(col, justify="right")
    if spec.target is not None:
        out.add_column(f"round to {spec.target}", justify="right")

    for row in table.to_dict("records"):
        cells = [cell_label(row), f"{row['completed']}/{row['seeds']}", mean_pm(row, "acc_mean"),
                 mean_pm(row, "acc_min"), mean_pm(row, "bytes_sent_per_node", 1e6, 2)]
        if spec.target is not None:
            r = row.get("rounds_to_target_mean", math.nan)
            cells.append(f"{r:.0f} ({row['target_reached']})" if not math.isnan(r) else f"never ({row['target_reached']})")
        out.add_row(*cells)
    return out
