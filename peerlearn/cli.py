"""Command line: ``peerlearn run | validate | list | compare``.

Exit codes: 0 success, 2 bad configuration or arguments (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from peerlearn.report.tables import _fmt, _summary_table

console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> int:
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    return 2


# a run's status -> the command's exit code (diverged, stopped: 1)
_EXIT_CODE = {"completed": 0, "interrupted": 130}


def _compute_setup(cfg) -> dict:
    """Threads (``threads`` or the idle cores), before the run allocates; what was chosen goes into
    summary.json (with the allocator mode, filled in by :func:`_allocator_for`)."""
    import torch

    from peerlearn.resources import choose_threads

    threads, load = choose_threads(cfg.threads)
    torch.set_num_threads(threads)
    return {"threads": threads, "load_average_1m": round(load, 2), "malloc": "system", "environment": _environment()}


def _environment() -> dict:
    """What a reader of a result needs to know about where it ran (summary.json, report.html)."""
    import platform

    import torch

    from peerlearn import __version__

    return {"peerlearn": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(terse=True), "device": "cpu", "hostname": platform.node(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}


class _Sinks:
    """Where a run's evaluation rows go besides the engine: ``metrics.csv`` (the writer), the experiment
    trackers, and, when the output is not a terminal (nohup, a batch scheduler, a pipe), one progress
    line per evaluation with the round, accuracy, rounds/s and the time left."""

    def __init__(self, cfg, writer, lines: bool, first_round: int = 0):
        from peerlearn.report.trackers import Trackers

        self.cfg, self.writer, self.lines = cfg, writer, lines
        self.trackers = Trackers(cfg.tracking, writer.path, writer.config)
        self.first_round, self.started = first_round, time.perf_counter()

    def __call__(self, row: dict) -> None:
        self.writer.append(row)
        self.trackers.log(row)
        if self.lines:
            round_, total = int(row["round"]), self.cfg.num_rounds
            elapsed = time.perf_counter() - self.started
            rate = (round_ - self.first_round) / elapsed if elapsed > 0 and round_ > self.first_round else math.nan
            left = (total - round_) / rate if rate > 0 else math.nan
            eta = "-" if math.isnan(left) else f"{int(left // 60)}m{int(left % 60):02d}s"
            print(f"{self.cfg.name}: round {round_}/{total}  acc {row.get('acc_mean', math.nan):.4f}  "
                  f"{'-' if math.isnan(rate) else f'{rate:.3g}'} rounds/s  ETA {eta}", flush=True)

    def save_model(self, built):
        """The engines' ``on_finish``: the final models into ``final_model.pt`` (unless ``save_model: false``)."""
        if not self.cfg.save_model:
            return None
        return lambda params_NP: self.writer.save_model(params_NP, built.honest_N, built.dataset.input_shape,
                                                        built.dataset.num_classes)

    def finish(self, status: str, compute: dict) -> dict:
        self.trackers.close(status)
        compute["environment"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
        return self.writer.finish(status, compute)


def _allocator_for(built, compute: dict) -> None:
    """Keep freed memory for reuse (the steady state without page faults, benchmarks/README.md) when the
    run's estimated memory is at most a quarter of what is available: a heap that never gives memory back
    can fragment (1M logistic-regression nodes peaked at 18 GB with glibc's default and ran out of 24 GB
    with freed memory kept). ``PEERLEARN_MALLOC=system`` always leaves glibc as it is."""
    from peerlearn.build import run_memory_bytes
    from peerlearn.resources import available_memory_bytes, keep_freed_memory

    if os.environ.get("PEERLEARN_MALLOC", "").lower() == "system":
        return
    have = available_memory_bytes()
    if have is not None and 4 * run_memory_bytes(built) <= have and keep_freed_memory():
        compute["malloc"] = "kept"


def cmd_run(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from peerlearn.config import ConfigError, load_config, parse_config, prune_unread, to_dict
    from peerlearn.build import build
    from peerlearn.engines import simulate
    from peerlearn.report import RunWriter, choose_run_dir
    from peerlearn.report.run_dir import config_changes, load_checkpoint

    if args.threads is not None:
        if args.resume:
            raise ConfigError("config error: --threads: a resumed run uses the threads of its config")
        args.set = [*args.set, f"threads={args.threads}"]
    if args.engine == "distributed":
        return _run_distributed(args)
    resume = None
    if args.resume:
        if args.config or args.set or args.out:
            raise ConfigError("config error: --resume DIR: continues the run in DIR with its own config; "
                              "give no config file, --set or --out")
        data, resume = load_checkpoint(args.resume)
        data, dropped = prune_unread(data)
        if dropped:  # a run directory written before keys belonged to members
            err_console.print(f"note: {args.resume}/config.yaml holds keys its parts do not read (written by an "
                              f"earlier peerlearn); ignored: {', '.join(dropped)}", markup=False, highlight=False,
                              soft_wrap=True)
        cfg, out_dir = parse_config(data), Path(args.resume)
        if "config" in resume:  # a section added to peerlearn since the checkpoint counts as its defaults
            saved = {**{k: v for k, v in to_dict(parse_config({})).items() if k not in resume["config"]},
                     **resume["config"]}
            changed = config_changes(saved, to_dict(cfg))
        else:
            changed = []
        if changed:  # one run, one config: an edited config.yaml would mix two
            raise ConfigError(f"config error: --resume {args.resume}: config.yaml differs from the one the checkpoint "
                              f"was written with: {', '.join(changed)}; restore it, or start a new run")
    elif args.config is None:
        raise ConfigError("config error: peerlearn run needs a config file (or --resume DIR)")
    else:
        cfg = load_config(args.config, args.set)
        out_dir = choose_run_dir(args.out, cfg.name, args.overwrite)
    compute = _compute_setup(cfg)
    built = build(cfg)  # every config error surfaces here, before the run directory is written
    _allocator_for(built, compute)
    if args.config and _declares_sweep(args.config):
        err_console.print(f"note: {args.config} declares a sweep: this runs its base config once "
                          f"(peerlearn sweep {args.config} runs the sweep)", markup=False, highlight=False,
                          soft_wrap=True)
    writer = RunWriter(out_dir, to_dict(cfg), rows=None if resume is None else resume["rows"],
                       checkpoint_every=cfg.checkpoint_every)
    terminal = console.is_terminal
    sinks = _Sinks(cfg, writer, lines=not terminal and not args.quiet,
                   first_round=0 if resume is None else resume["round"])
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
                        disable=args.quiet or not terminal)
    status = "completed"
    with progress:
        task = progress.add_task(cfg.name, total=cfg.num_rounds, status="",
                                 completed=0 if resume is None else resume["round"])

        def on_round(round_: int, last: dict) -> None:
            progress.update(task, completed=round_, status=f"acc {last['acc_mean']:.3f}")

        try:
            simulate(built, on_eval=sinks, on_round=on_round, on_checkpoint=writer.checkpoint,
                     on_finish=sinks.save_model(built), resume=resume)
        except KeyboardInterrupt:
            status = "interrupted"
        except FloatingPointError as err:
            status = "diverged"
            err_console.print(f"error: {err}", markup=False, soft_wrap=True)
    summary = sinks.finish(status, compute)
    if not args.quiet:
        console.print(_summary_table(f"{cfg.name}: {cfg.algorithm.name} on {cfg.topology.graph.name}, "
                                     f"{cfg.num_nodes} nodes, {cfg.data.dataset.name}", {cfg.name: summary["final"]}))
        console.print(f"results: {out_dir}/ (report.html, metrics.csv, summary.json, final_model.pt, plots)",
                      markup=False)
    return _EXIT_CODE.get(status, 1)


def _run_distributed(args) -> int:
    """One rank of a distributed run (launched by ``--nproc N`` or torchrun): rank 0 writes the run
    directory (and shows the progress); every rank logs to ``logs/rank<r>.log`` in it."""
    from peerlearn.config import ConfigError, load_config, to_dict
    from peerlearn.build import build
    from peerlearn.engines import distributed
    from peerlearn.engines.membership import RunStopped
    from peerlearn.report import RunWriter, choose_run_dir

    if args.resume:
        raise ConfigError("config error: --resume: not available with --engine distributed yet")
    if args.config is None:
        raise ConfigError("config error: peerlearn run needs a config file")
    for flag, value in (("--timeout-s", args.timeout_s), ("--startup-timeout-s", args.startup_timeout_s)):
        if not 0 < value < 1e6:
            raise ConfigError(f"config error: {flag}: a positive number of seconds below 1e6, got {value}")
    if args.nproc is not None and "RANK" not in os.environ:  # the launcher: check, then start the ranks
        if args.nproc < 1:
            raise ConfigError(f"config error: --nproc: at least 1 rank, got {args.nproc}")
        distributed.check_config(load_config(args.config, args.set), args.nproc)
        from peerlearn.engines.launch import launch_local

        argv = ["run", args.config, "--engine", "distributed", "--timeout-s", str(args.timeout_s),
                "--startup-timeout-s", str(args.startup_timeout_s)]
        argv += [a for s in args.set for a in ("--set", s)] + (["--out", args.out] if args.out else [])
        argv += ["--overwrite"] * args.overwrite + ["--quiet"] * args.quiet
        return launch_local(argv, args.nproc, grace_s=args.timeout_s + 10.0)
    membership = distributed.join_from_env(args.timeout_s, args.startup_timeout_s)
    rank, world = membership.rank, len(membership.members)
    try:
        cfg = load_config(args.config, args.set)  # every rank checks the same config: all fail alike
        distributed.check_config(cfg, world)
        compute = _compute_setup(cfg)
        writer, chosen = None, None
        if rank == 0:
            try:
                out_dir = choose_run_dir(args.out, cfg.name, args.overwrite)
                writer = RunWriter(out_dir, to_dict(cfg))
                chosen = str(out_dir)
            except (FileExistsError, FileNotFoundError) as err:
                chosen = f"error: {err}"
        chosen = membership.share("out_dir", chosen)
        if chosen.startswith("error: "):
            raise FileExistsError(chosen.removeprefix("error: "))
        out_dir = Path(chosen)
        built = build(cfg)
        _allocator_for(built, compute)
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        with open(out_dir / "logs" / f"rank{rank}.log", "w") as log:
            def say(message: str) -> None:
                print(f"[{time.strftime('%H:%M:%S')}] {message}", file=log, flush=True)
                if rank == 0 and not args.quiet:
                    err_console.print(f"rank 0: {message}", markup=False, highlight=False)

            rows_here = distributed.node_blocks(cfg.num_nodes, world)[rank]
            say(f"rank {rank}/{world}, pid {os.getpid()}: nodes {int(rows_here[0])}..{int(rows_here[-1])}")

            def on_round(round_: int, last: dict) -> None:
                if not args.quiet and round_ % max(1, cfg.num_rounds // 20) == 0:
                    console.print(f"round {round_}/{cfg.num_rounds}: acc {last['acc_mean']:.3f}", markup=False)

            started = time.perf_counter()
            status = "completed"
            sinks = _Sinks(cfg, writer, lines=False) if writer is not None else None
            try:
                distributed.simulate_distributed(built, membership, on_eval=sinks, on_finish=sinks.save_model(built)
                                                 if sinks else None, on_round=on_round if rank == 0 else None, log=say)
            except RunStopped as err:
                say(f"stopped: {err}")
                err_console.print(f"error: rank {rank}: {err}", markup=False, highlight=False, soft_wrap=True)
                status = "stopped"
            except KeyboardInterrupt as err:  # Ctrl-C reaches every rank: each says where it stopped
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher forwards it again: finish writing
                where = getattr(err, "completed", None)
                line = "interrupted" + ("" if where is None else f" after round {where}")
                say(line)
                err_console.print(f"rank {rank}: {line}", markup=False, highlight=False, soft_wrap=True)
                status = "interrupted"
            except FloatingPointError as err:  # the divergence rule: every rank sees the same reduced loss
                say(f"stopped: {err}")
                if rank == 0:
                    err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
                status = "diverged"
            else:
                say(f"finished {cfg.num_rounds} rounds in {time.perf_counter() - started:.1f} s "
                    f"with ranks {membership.members}")
        if writer is not None and status != "completed":
            sinks.finish(status, compute)  # the rows written so far stay; summary.json says why the run ended
        if status != "completed":
            return _EXIT_CODE.get(status, 1)
        if writer is not None:
            summary = sinks.finish("completed", compute)
            if not args.quiet:
                console.print(_summary_table(f"{cfg.name}: {cfg.algorithm.name} on {cfg.topology.graph.name}, "
                                             f"{cfg.num_nodes} nodes on {world} ranks", {cfg.name: summary["final"]}))
                console.print(f"results: {out_dir}/", markup=False)
        return 0
    finally:
        membership.close()


def _declares_sweep(path: str) -> bool:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(raw, dict) and "sweep" in raw


def cmd_validate(args) -> int:
    from peerlearn.config import load_config
    from peerlearn.build import build

    cfg = load_config(args.config, args.set)
    if not args.quick:
        build(cfg)  # everything short of training: data, graph, partition, model, algorithm, threat, faults
    checked = "keys, values and the rules between parts" + ("" if args.quick else
                                                           "; loaded the data, drew the graph and the partition, "
                                                           "built the model and the algorithm")
    console.print(f"{args.config}: valid ({cfg.algorithm.name}, {cfg.topology.graph.name}, {cfg.num_nodes} nodes, "
                  f"{cfg.data.dataset.name}). Checked: {checked}. Not checked: training itself (divergence, run "
                  f"time){' and everything --quick skips' if args.quick else ''}.", markup=False)
    return 0


def cmd_list(args) -> int:
    import json

    from peerlearn.config import load_plugins
    from peerlearn.report.catalog import as_json, catalog, render

    load_plugins(args.plugin)
    entries = catalog(args.family, own_only=args.family is None and not args.json)
    if args.json:
        print(json.dumps(as_json(entries), indent=1, default=repr))
    else:
        render(console, entries, detailed=args.family is not None)
    return 0


def cmd_compare(args) -> int:
    from peerlearn.report import plot_compare, read_run

    if args.group_by or any((Path(p) / "sweep.json").is_file() for p in args.runs):
        return _compare_bands(args)
    runs, finals = {}, {}
    for path in args.runs:
        summary, rows = read_run(path)
        label = Path(path).name if Path(path).name not in runs else str(path)
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
    from peerlearn.sweep import Sweep, default_workers, parse_grid, parse_seeds, plan, summarize

    updates = {"grid": {**spec.grid, **parse_grid(args.grid)}}
    if args.seeds is not None:
        updates["seeds"] = parse_seeds(args.seeds)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"config error: --workers: at least 1, got {args.workers}")
    for key in ("workers", "target"):
        if getattr(args, key, None) is not None:
            updates[key] = getattr(args, key)
    spec = spec.model_copy(update=updates)
    cells = plan(args.config, spec, args.set)  # every cell checked before any run starts
    definition = json.loads(json.dumps({"config": str(Path(args.config).resolve()), "set": args.set,
                                        "seeds": spec.seeds, "grid": spec.grid,
                                        "variants": {k: v.model_dump() for k, v in spec.variants.items()}}))
    if spec.workers:
        workers, threads = spec.workers, max(1, choose_threads(None)[0] // spec.workers)
    else:
        workers, threads = default_workers(cells)
    sweep = Sweep(out, cells, definition, workers, threads)
    sweep.check_out(args.overwrite)
    left = sweep.refresh()
    if not args.quiet:
        resumed = "" if len(left) == len(cells) else f"; {len(cells) - len(left)} done before, {len(left)} left"
        console.print(f"sweep: {len(cells)} runs ({len({c.cell for c in cells})} cells x {len(spec.seeds)} seeds) "
                      f"into {out}/, {workers} at a time with {threads} thread{'s' * (threads > 1)} each{resumed}",
                      markup=False, highlight=False, soft_wrap=True)

    def on_done(cell, done, total):
        if args.quiet:
            return
        final = ""
        summary = out / cell.dir / "summary.json"
        if cell.status == "completed" and summary.is_file():
            final = f", acc {(json.loads(summary.read_text()).get('final') or {}).get('acc_mean') or math.nan:.4f}"
        why = f": {cell.error}" if cell.error else ""
        console.print(f"[{done}/{total}] {cell.cell} seed {cell.seed}: {cell.status}{final} ({cell.wall_time_s} s)"
                      f"{why}", markup=False, highlight=False, soft_wrap=True)

    try:
        sweep.run(on_done)
    except KeyboardInterrupt:
        summarize(out, cells, spec)
        _fail(f"interrupted: the runs done so far are kept; run the same command again to finish the sweep in {out}/")
        return 130, None, spec
    table = summarize(out, cells, spec, getattr(args, "group_by", None) or "cell")
    if not args.quiet:
        console.print(_sweep_table(table, spec))
        console.print(f"results: {out}/ (summary.csv, accuracy.png, accuracy.pdf, sweep.json, one run directory "
                      "per cell and seed)", markup=False, highlight=False, soft_wrap=True)
    failed = [c for c in cells if c.status not in ("completed", "diverged")]
    for c in failed:
        err_console.print(f"{c.dir}: {c.status}: {c.error}", markup=False, highlight=False, soft_wrap=True)
    return (1 if failed else 0), table, spec


def cmd_reproduce(args) -> int:
    from peerlearn.config import ConfigError
    from peerlearn.sweep import load_sweep, markdown_table, reproduction_files

    files = reproduction_files()
    if args.list or args.name is None:
        if not files:
            raise ConfigError("config error: no configs/reproduce/ here or in peerlearn's source tree (the "
                              "reproductions ship with the repository; run from its root)")
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
    args.config, args.grid, args.set, args.target = str(path), [], [], None
    out = Path(args.out) if args.out else Path("runs") / "reproduce" / path.stem
    code, table, spec = _run_sweep(args, load_sweep(path), out)
    if table is not None:
        text = f"{spec.title or path.stem}\n\n{markdown_table(table, spec)}"
        (out / "table.md").write_text(text)
        print(text, flush=True)
        console.print(f"table: {out}/table.md, figure: {out}/accuracy.png (and .pdf)", markup=False)
    return code


def _sweep_table(table, spec) -> Table:
    """The sweep's cells as rows: mean +- std over seeds of the final metrics."""
    from peerlearn.sweep import cell_label

    out = Table(title=spec.title or "sweep: final evaluated round, mean +- std over seeds")
    out.add_column("cell", overflow="fold", min_width=12)
    for col in ("ok", "acc mean", "acc min", "MB/node"):
        out.add_column(col, justify="right")
    if spec.target is not None:
        out.add_column(f"round to {spec.target}", justify="right")

    def pm(row, metric, scale=1.0, digits=4):
        mean, std = row.get(f"{metric}_mean", math.nan), row.get(f"{metric}_std", math.nan)
        if mean is None or math.isnan(mean):
            return "-"
        return f"{mean / scale:.{digits}f}" + ("" if std is None or math.isnan(std) else f" ± {std / scale:.{digits}f}")

    for row in table.to_dict("records"):
        cells = [cell_label(row, spec), f"{row['completed']}/{row['seeds']}", pm(row, "acc_mean", digits=3),
                 pm(row, "acc_min", digits=3), pm(row, "bytes_sent_per_node", 1e6, 2)]
        if spec.target is not None:
            r = row.get("rounds_to_target_mean", math.nan)
            cells.append(f"{r:.0f} ({row['target_reached']})" if not math.isnan(r) else f"never ({row['target_reached']})")
        out.add_row(*cells)
    return out


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
    from peerlearn.report.matrix import run_matrix

    cfg = load_config(args.config, args.set)  # imports the config's plugins: their members are names here too
    _compute_setup(cfg)
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
                          f"min {row['acc_min']:.3f}", markup=False)

    rows = run_matrix(base, attacks, list(args.defenses), out, on_cell, cfg)
    table.add_column("attack \\ defence")
    for d in args.defenses:
        table.add_column(d, justify="right")
    for a in attacks:
        cells = {r["defense"]: r for r in rows if r["attack"] == a}
        table.add_row(a, *(f"{cells[d]['acc_mean']:.2f} / {cells[d]['acc_min']:.2f}" for d in args.defenses))
    console.print(table)
    (out / "config.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    console.print(f"results: {out}/ (matrix.csv, matrix.png)", markup=False)
    return 0


def make_parser() -> argparse.ArgumentParser:
    from peerlearn import __version__

    parser = argparse.ArgumentParser(prog="peerlearn", description="Decentralized learning experiments.")
    parser.add_argument("--version", action="version", version=f"peerlearn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment config and write its results directory")
    run.add_argument("config", nargs="?", help="experiment YAML file")
    run.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR from its last "
                     "checkpoint (written at every evaluation)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set algorithm.lr=0.05 (repeatable)")
    run.add_argument("--out", help="results directory (default: runs/<name>, made unique)")
    run.add_argument("--overwrite", action="store_true", help="reuse --out even if it holds an earlier run")
    run.add_argument("--quiet", action="store_true", help="no progress bar or table")
    run.add_argument("--threads", type=int, metavar="N", help="intra-op threads (same as --set threads=N; default: "
                     "OMP_NUM_THREADS, else the idle cores)")
    run.add_argument("--engine", choices=["simulator", "distributed"], default="simulator",
                     help="simulator: all nodes in this process (default); distributed: real processes, each "
                          "hosting a block of the nodes (start them with --nproc N, or with torchrun)")
    run.add_argument("--nproc", type=int, metavar="N", help="distributed: start N ranks on this machine (a rank "
                     "that dies leaves the others training; torchrun would stop them all)")
    run.add_argument("--timeout-s", type=float, default=60.0, help="distributed: how long a silent peer or a "
                     "blocked exchange is waited for before the survivors go on without it (default 60)")
    run.add_argument("--startup-timeout-s", type=float, default=300.0, help="distributed: how long the ranks wait "
                     "for each other to start and connect (default 300)")
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check a config without running it")
    val.add_argument("config")
    val.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    val.add_argument("--quick", action="store_true", help="only the keys, values and rules between parts: do not "
                     "load the data or build the graph, partition and model")
    val.add_argument("--build", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for scripts
    val.set_defaults(func=cmd_validate)

    lst = sub.add_parser("list", help="every member of every family (graphs, datasets, models, algorithms, "
                         "aggregators, attacks ...) and every config section, with their keys")
    lst.add_argument("family", nargs="?", help="one family (e.g. aggregator) or section (e.g. faults): every key "
                     "with its default, bounds and description")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="also list the members this "
                     "module (name or .py path) registers (repeatable; PEERLEARN_PLUGINS works too)")
    lst.set_defaults(func=cmd_list)

    cmp_ = sub.add_parser("compare", help="one table and one overlay plot for several run directories")
    cmp_.add_argument("runs", nargs="+", help="run directories, sweep directories or globs of them")
    cmp_.add_argument("--out", default="comparison.png", help="plot file; .png, .pdf or .svg (default: "
                      "comparison.png)")
    cmp_.add_argument("--target", type=float, help="also report when each run first reached this accuracy")
    cmp_.add_argument("--target-metric", default="acc_mean", help="metric for --target (default: acc_mean)")
    cmp_.add_argument("--metric", default="acc_mean", help="accuracy column to plot, e.g. acc_alive_mean under "
                      "faults, acc_avg_model (default: acc_mean)")
    cmp_.add_argument("--x", default="round", choices=["round", "sim_time_s", "epsilon"],
                      help="x axis of the accuracy and "
                      "consensus panels: rounds, simulated seconds (to compare synchronous and asynchronous "
                      "runs), or the privacy spent (runs with privacy noise; default: round)")
    cmp_.add_argument("--group-by", metavar="KEY", help="mean curves with +-1 std bands over the runs sharing a value "
                      "of KEY (a config or grid key such as algorithm.lr, or cell); the default for sweep directories")
    cmp_.set_defaults(func=cmd_compare)
    swp = sub.add_parser("sweep", help="run a config over seeds x a grid of keys in parallel; mean +- std per cell")
    swp.add_argument("config", help="experiment YAML file (its sweep: section, if any, declares the sweep)")
    swp.add_argument("--seeds", help="seeds, e.g. 0,1,2 or 0-4 (default: the sweep section's, else 0)")
    swp.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                     help="a key and its values, e.g. --grid algorithm.lr=0.05,0.1 (repeatable: the cartesian product)")
    swp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key in every run")
    swp.add_argument("--workers", type=int, metavar="K", help="runs at once (default: as the idle cores and the "
                     "memory estimate allow; threads per run = cores / K)")
    swp.add_argument("--target", type=float, help="also report rounds and MB until the accuracy reaches this")
    swp.add_argument("--group-by", metavar="KEY", help="the figure's curves: one per cell (default) or per value of "
                     "this grid or config key, pooling the rest")
    swp.add_argument("--out", help="sweep directory (default: runs/<config name>-sweep; the same sweep there resumes)")
    swp.add_argument("--overwrite", action="store_true", help="run into --out even if it holds something else")
    swp.add_argument("--quiet", action="store_true")
    swp.set_defaults(func=cmd_sweep)
    rep = sub.add_parser("reproduce", help="rerun one of the documented reproductions (a declared sweep in "
                         "configs/reproduce/) and write its table and figure")
    rep.add_argument("name", nargs="?", help="a reproduction's name (see --list) or a sweep file")
    rep.add_argument("--list", action="store_true", help="the reproductions and their claims")
    rep.add_argument("--seeds", help="seeds instead of the file's, e.g. 0 for a quick look or 0-4")
    rep.add_argument("--workers", type=int, metavar="K", help="runs at once (default: as cores and memory allow)")
    rep.add_argument("--out", help="results directory (default: runs/reproduce/<name>; the same sweep there resumes)")
    rep.add_argument("--overwrite", action="store_true", help="run into --out even if it holds something else")
    rep.add_argument("--quiet", action="store_true")
    rep.set_defaults(func=cmd_reproduce)
    mat = sub.add_parser("matrix", help="run every attack x defence pair; a table and a heatmap")
    mat.add_argument("config")
    mat.add_argument("--attacks", nargs="+", default=["gaussian", "sign_flip", "alie", "ipm", "large_norm", "dmpa",
                                                         "label_flip", "backdoor"])
    mat.add_argument("--defenses", nargs="+", default=["gossip", "median", "trimmed_mean", "krum",
                                                          "geometric_median", "centered_clipping", "nna"],
                     help="aggregators, each optionally with its own algorithm keys: bulyan:f=1 or "
                          "centered_clipping:tau=0.1")
    mat.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    mat.add_argument("--out", help="results directory (default: runs/<name>-matrix, made unique)")
    mat.add_argument("--overwrite", action="store_true", help="reuse --out even if it holds files")
    mat.add_argument("--quiet", action="store_true")
    mat.set_defaults(func=cmd_matrix)
    return parser


def _internal_error(err: BaseException) -> int:
    """Anything else: one line, and the traceback saved to a file (never a screen of stack)."""
    import tempfile
    import traceback

    path = Path(tempfile.gettempdir()) / f"peerlearn-traceback-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        path.write_text("".join(traceback.format_exception(err)))
        where = f"traceback saved to {path}"
    except OSError:
        where = "the traceback could not be saved"
    detail = str(err).splitlines()[0] if str(err) else ""
    hint = " (out of memory: fewer nodes, a smaller model or fewer test samples)" if isinstance(err, MemoryError) \
        else ""
    err_console.print(f"error: {type(err).__name__}{': ' + detail if detail else ''}{hint}; {where}", markup=False,
                      highlight=False, soft_wrap=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    from peerlearn.config import ConfigError

    args = make_parser().parse_args(argv)
    try:
        code = args.func(args)
    except ConfigError as err:
        code = _fail(str(err))
    except (FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        code = _fail(f"error: {err}")
    except KeyboardInterrupt:  # before or after a run's own handling (which keeps its rows)
        _fail("interrupted")
        code = 130
    except Exception as err:  # noqa: BLE001 (the last line of defence: one line, the traceback in a file)
        code = _internal_error(err)
    if getattr(args, "engine", None) == "distributed" and "RANK" in os.environ:
        # a rank leaves without running C++ destructors: a gloo group that lost a peer can abort the
        # process while it is torn down ("terminate called without an active exception"), after
        # the run is complete and written
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
