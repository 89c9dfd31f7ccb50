"""``peerlearn run`` (the simulator and the distributed engine) and ``peerlearn validate``."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from peerlearn import runner
from peerlearn.cli.common import check_waits, console, err_console
from peerlearn.report.tables import _summary_table


def cmd_run(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from peerlearn.config import ConfigError
    from peerlearn.engines import simulate
    from peerlearn.report import choose_run_dir

    if args.trust_plugins and not args.resume:
        raise ConfigError("config error: --trust-plugins: only with --resume DIR (a config you give is yours)")
    if args.threads is not None:
        if args.resume:
            raise ConfigError("config error: --threads: a resumed run uses the threads of its config")
        args.set = [*args.set, f"threads={args.threads}"]
    if args.device is not None and not args.resume:
        args.set = [*args.set, f"device={args.device}"]
    if args.resume and (args.config or args.set or args.out):
        raise ConfigError("config error: --resume DIR: continues the run in DIR with its own config; "
                          "give no config file, --set or --out")
    if args.config is None and not args.resume:
        raise ConfigError("config error: peerlearn run needs a config file (or --resume DIR)")
    if args.engine == "distributed":
        return _run_distributed(args)
    if args.engine == "p2p":
        from peerlearn.cli.p2p import run_p2p

        return run_p2p(args)
    cfg, resume = _run_config(args)
    out_dir = Path(args.resume) if args.resume else choose_run_dir(args.out, cfg.name, args.overwrite)
    compute, built = runner.start(cfg)  # every config error surfaces here, before the run directory is written
    if args.config and _declares_sweep(args.config):
        err_console.print(f"note: {args.config} declares a sweep: this runs its base config once "
                          f"(peerlearn sweep {args.config} runs the sweep)", markup=False, highlight=False,
                          soft_wrap=True)
    terminal = console.is_terminal
    folder = runner.RunFolder(cfg, out_dir, resume=resume, lines=not terminal and not args.quiet)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
                        disable=args.quiet or not terminal)
    with progress:
        task = progress.add_task(cfg.name, total=cfg.num_rounds, status="",
                                 completed=0 if resume is None else resume["round"])

        def on_round(round_: int, last: dict) -> None:
            progress.update(task, completed=round_, status=f"acc {last['acc_mean']:.3f}")

        def say(status: str, err: BaseException) -> None:
            if status == "diverged":
                err_console.print(f"error: {err}", markup=False, soft_wrap=True)

        status = runner.outcome(lambda: simulate(built, on_round=on_round, resume=resume, **folder.callbacks(built)),
                                say)
    summary = folder.finish(status, compute)
    if status == "interrupted":  # even with --quiet: what was kept, and how to go on
        saved = folder.writer.checkpointed_round
        err_console.print(f"interrupted: {out_dir}/ keeps the rows to round {summary['rounds_completed']}; " + (
            f"continue from round {saved} with: peerlearn run --resume {out_dir}" if saved is not None else
            "no checkpoint was written yet: run it again"), markup=False, highlight=False, soft_wrap=True)
    elif not args.quiet:
        console.print(_summary_table(f"{cfg.name}: {cfg.algorithm.name} on {cfg.topology.graph.name}, "
                                     f"{cfg.num_nodes} nodes, {cfg.data.dataset.name}", {cfg.name: summary["final"]}))
        written = ["report.html", "metrics.csv", "summary.json"] + ["final_model.pt"] * (out_dir / "final_model.pt").is_file()
        console.print(f"results: {out_dir}/ ({', '.join(written)}, plots)", markup=False)
    return runner.EXIT_CODE.get(status, 1)


def _run_distributed(args) -> int:
    """One rank of a distributed run (launched by ``--nproc N``, by hand or by torchrun): it joins the run
    (rank 0 admits the others: :mod:`peerlearn.engines.join`); rank 0 writes the run directory (and shows
    the progress); every rank logs to ``logs/rank<r>.log`` in it. With ``--nproc N`` and no ``RANK``, this
    process is the launcher: it checks the config and starts the ranks."""
    from peerlearn.config import ConfigError
    from peerlearn.engines import distributed

    check_waits(args, default_timeout_s=60.0)
    if args.nproc is not None and "RANK" not in os.environ:  # the launcher: check, then start the ranks
        if args.nproc < 1:
            raise ConfigError(f"config error: --nproc: at least 1 rank, got {args.nproc}")
        distributed.check_config(_run_config(args)[0], args.nproc)
        from peerlearn.engines.launch import launch_local

        argv = ["run", *([args.config] if args.config else ["--resume", args.resume]), "--engine", "distributed",
                "--timeout-s", str(args.timeout_s), "--startup-timeout-s", str(args.startup_timeout_s)]
        argv += ["--trust-plugins"] * args.trust_plugins
        argv += [a for s in args.set for a in ("--set", s)] + (["--out", args.out] if args.out else [])
        argv += ["--overwrite"] * args.overwrite + ["--quiet"] * args.quiet
        return launch_local(argv, args.nproc, grace_s=args.timeout_s + 10.0)
    return _rank(args)


def _run_config(args) -> tuple[object, dict | None]:
    """The run's config, and the checkpoint it resumes from (each rank of a distributed run reads the folder)."""
    from peerlearn.config import load_config

    if not args.resume:
        return load_config(args.config, args.set), None
    quiet = args.engine == "distributed" and os.environ.get("RANK") != "0"  # rank 0 says what the folder holds
    return runner.load_resume(args.resume, args.trust_plugins, note=lambda line: None if quiet else err_console.print(
        f"note: {line}", markup=False, highlight=False, soft_wrap=True), device=getattr(args, "device", None))


class _RankLog:
    """A rank's log, ``logs/rank<r>.log`` in the run folder: lines said before the folder is known are kept
    and written first; ``echo`` also prints a line (rank 0's progress, unless --quiet)."""

    def __init__(self, rank: int):
        self.rank, self.early, self.file = rank, [], None

    def open(self, out_dir: Path, append: bool) -> None:
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.file = open(out_dir / "logs" / f"rank{self.rank}.log", "a" if append else "w")
        for line in self.early:
            print(line, file=self.file, flush=True)

    def write(self, message: str, echo: bool = False) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        if self.file is None:
            self.early.append(line)
        elif not self.file.closed:
            print(line, file=self.file, flush=True)
        if echo:
            err_console.print(f"rank {self.rank}: {message}", markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _rank(args) -> int:
    """This process's rank: warnings, the secret and the config (before any work: all ranks fail alike),
    the join, then the run (:func:`_rank_run`)."""
    from peerlearn.config import to_dict
    from peerlearn.engines import distributed
    from peerlearn.engines.join import read_secret
    from peerlearn.engines.membership import RunStopped

    rank, world = distributed.launch_environment()
    for warning in (distributed.elastic_warning(),
                    "warning: --insecure: nothing authenticates this run's ranks: anyone who reaches MASTER_ADDR:"
                    "MASTER_PORT can join it, read its models and replace them" if args.insecure else None):
        if warning:
            err_console.print(warning, markup=False, highlight=False, soft_wrap=True)
    secret = read_secret(args.secret_file, args.insecure)  # before any work: a missing secret is one line
    cfg, resume = _run_config(args)
    distributed.check_config(cfg, world)
    log = _RankLog(rank)
    try:  # rank 0 names every refused join, even with --quiet
        membership = distributed.join_from_env(to_dict(cfg), secret, args.timeout_s, args.startup_timeout_s,
                                               lambda message: log.write(message, echo=True))
    except RunStopped as err:
        err_console.print(f"error: rank {rank}: {err}", markup=False, highlight=False, soft_wrap=True)
        return 1
    try:
        return _rank_run(args, cfg, resume, membership, log, world)
    except RunStopped as err:  # before the rounds: e.g. a value in the store failed its tag
        err_console.print(f"error: rank {rank}: {err}", markup=False, highlight=False, soft_wrap=True)
        return 1
    finally:
        log.close()
        membership.close()


def _rank_run(args, cfg, resume: dict | None, membership, log: _RankLog, world: int) -> int:
    """The run on this rank: the folder (rank 0 chooses it and writes it), the rounds, the summary."""
    from peerlearn.engines import distributed
    from peerlearn.report import choose_run_dir

    rank, chosen = membership.rank, args.resume
    if not args.resume:
        if rank == 0:
            try:
                chosen = str(choose_run_dir(args.out, cfg.name, args.overwrite))
            except (FileExistsError, FileNotFoundError) as err:
                chosen = f"error: {err}"
        chosen = membership.share("out_dir", chosen)
    if chosen.startswith("error: "):
        raise FileExistsError(chosen.removeprefix("error: "))
    out_dir = Path(chosen)
    distributed.use_local_gpu(cfg)
    compute, built = runner.start(cfg)
    folder = runner.RunFolder(cfg, out_dir, resume=resume) if rank == 0 else None  # rank 0 writes the run
    log.open(out_dir, append=resume is not None)
    say = lambda message: log.write(message, echo=rank == 0 and not args.quiet)  # noqa: E731
    rows_here = distributed.node_blocks(cfg.num_nodes, world)[rank]
    say(f"rank {rank}/{world}, pid {os.getpid()}: nodes {int(rows_here[0])}..{int(rows_here[-1])}")
    started = time.perf_counter()
    status = runner.outcome(lambda: distributed.simulate_distributed(
        built, membership, on_round=_progress(cfg, args.quiet) if rank == 0 else None, log=say, checkpoints=True,
        resume=resume, **(folder.callbacks(built) if folder is not None else {})), _stopped(rank, say))
    if status == "completed":
        say(f"finished {cfg.num_rounds} rounds in {time.perf_counter() - started:.1f} s with ranks {membership.members}")
    if folder is not None:  # the rows written so far stay; summary.json says how the run ended
        summary = folder.finish(status, compute)
        saved = folder.writer.checkpointed_round
        if status == "interrupted" and saved is not None:  # even with --quiet: how to go on
            err_console.print(f"interrupted: continue from round {saved} with: peerlearn run --resume {out_dir} "
                              "--engine distributed (and --nproc N, or the ranks started by hand)",
                              markup=False, highlight=False, soft_wrap=True)
        if status == "completed" and not args.quiet:
            console.print(_summary_table(f"{cfg.name}: {cfg.algorithm.name} on {cfg.topology.graph.name}, "
                                         f"{cfg.num_nodes} nodes on {world} ranks", {cfg.name: summary["final"]}))
            console.print(f"results: {out_dir}/", markup=False)
    return runner.EXIT_CODE.get(status, 1)


def _progress(cfg, quiet: bool):
    """Rank 0's ``on_round``: a line per fresh row, about 20 in a run."""
    shown = [0]

    def on_round(round_: int, last: dict) -> None:
        due = round_ - shown[0] >= max(1, cfg.num_rounds // 20) or round_ == cfg.num_rounds
        if not quiet and int(last["round"]) == round_ and due:
            shown[0] = round_
            console.print(f"round {round_}/{cfg.num_rounds}: acc {last['acc_mean']:.3f}", markup=False)
    return on_round


def _stopped(rank: int, say):
    """Every rank says in one line why it stopped (``runner.outcome``'s ``say``)."""
    def stopped(status: str, err: BaseException) -> None:
        if status == "interrupted":  # Ctrl-C reaches every rank: each says where it stopped
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher forwards it again: finish writing
            where = getattr(err, "completed", None) if rank == 0 else None  # the ranks may be a round apart:
            line = "interrupted" + ("" if where is None else f" after round {where}")  # rank 0's is the run's
            say(line)
            err_console.print(f"rank {rank}: {line}", markup=False, highlight=False, soft_wrap=True)
            return
        say(f"stopped: {err}")
        if status == "stopped" or rank == 0:  # the divergence rule: every rank sees the same loss
            who = f"rank {rank}: " if status == "stopped" else ""
            err_console.print(f"error: {who}{err}", markup=False, highlight=False, soft_wrap=True)
    return stopped


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
    runner.check(cfg)
    if not args.quick:
        build(cfg)  # everything short of training: data, graph, partition, model, algorithm, threat, faults
    checked = "keys, values and the rules between parts" + ("" if args.quick else
                                                           "; loaded the data, drew the graph and the partition, "
                                                           "built the model and the algorithm")
    console.print(f"{args.config}: valid ({cfg.algorithm.name}, {cfg.topology.graph.name}, {cfg.num_nodes} nodes, "
                  f"{cfg.data.dataset.name}). Checked: {checked}. Not checked: training itself (divergence, run "
                  f"time){' and everything --quick skips' if args.quick else ''}.", markup=False)
    return 0


def cmd_init(args) -> int:
    from peerlearn import bundled

    folder = Path(args.dir)
    written = bundled.init_folder(folder)
    console.print(f"wrote {', '.join(p.name for p in written)} into {folder}/. Next:\n"
                  f"  cd {folder}\n"
                  "  peerlearn run quickstart.yaml            # 64 nodes on a ring; a table and plots in runs/\n"
                  "  peerlearn run plugin.yaml                # a run made of the parts in my_parts.py\n"
                  "  python analyze_results.py                # a small sweep, read with pandas", markup=False,
                  soft_wrap=True)
    return 0
