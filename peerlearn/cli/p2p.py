"""``peerlearn run CONFIG --engine p2p``: a swarm of peers on this machine (``--nproc K``), or one peer started
by hand (``--peer I/K`` and ``--join MULTIADDR``), each writing its own run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from peerlearn import runner
from peerlearn.cli.common import check_waits, console, err_console


def _config(args):
    from peerlearn.config import ConfigError, load_config

    if args.resume:
        raise ConfigError("config error: --resume: a peer does not resume (a swarm goes on without it; rejoining "
                          "is not built yet)")
    return load_config(args.config, args.set)


def _need_hivemind() -> None:
    from peerlearn.config import ConfigError

    try:
        import hivemind  # noqa: F401
    except ImportError:
        raise ConfigError("config error: --engine p2p: needs hivemind: pip install 'peerlearn[p2p]'") from None


def run_p2p(args) -> int:
    from peerlearn.config import ConfigError
    from peerlearn.engines.p2p.churn import load_churn
    from peerlearn.engines.p2p.peer import check_config, parse_place

    check_waits(args, default_timeout_s=10.0)  # a p2p exchange's deadline
    cfg, deadline = _config(args), args.timeout_s
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"config error: --nproc: at least 1 peer, got {args.nproc}")
    peers = args.nproc if args.nproc is not None else parse_place(args.peer)[1] if args.peer else 1
    check_config(cfg, peers)
    churn = load_churn(args.churn, peers, cfg.num_rounds, cfg.algorithm.capabilities.asynchronous)
    if args.nproc is not None and args.peer is None:  # the launcher: check everything, then start the peers
        runner.check(cfg)
        _need_hivemind()
        return _launch(args, cfg, deadline, churn)
    return _peer(args, cfg, deadline, churn)


def _launch(args, cfg, deadline: float, churn) -> int:
    from peerlearn.engines.p2p.launch import launch_swarm
    from peerlearn.report import choose_run_dir
    from peerlearn.report.run_dir import read_summary
    from peerlearn.report.tables import _summary_table

    out_dir = choose_run_dir(args.out, cfg.name, args.overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = ["run", args.config, "--engine", "p2p", "--timeout-s", str(deadline),
            "--startup-timeout-s", str(args.startup_timeout_s), "--quiet"]
    argv += [a for s in args.set for a in ("--set", s)] + ["--overwrite"] * args.overwrite
    if args.churn:  # every peer reads its events; the peers that start the swarm wait for each other only
        argv += ["--churn", str(Path(args.churn).resolve()), "--wait-for", str(args.nproc - len(churn.joiners))]
    codes = launch_swarm(argv, args.nproc, out_dir, args.startup_timeout_s)
    summaries = {f"peer{i}": read_summary(out_dir / f"peer{i}") for i in range(args.nproc)}
    finals = {name: s.get("final", {}) for name, s in summaries.items() if s is not None}
    _swarm_results(out_dir)
    if finals and not args.quiet:
        console.print(_summary_table(f"{cfg.name}: {cfg.algorithm.name} on {cfg.topology.graph.name}, {cfg.num_nodes} "
                                     f"nodes on {args.nproc} peers", finals))
        console.print(f"results: {out_dir}/swarm.csv and swarm.png (the swarm: accuracy over its live peers against "
                      f"wall time), {out_dir}/peer*/ (each peer's run folder)", markup=False)
    completed = [c for c in codes if c == 0]
    return 0 if completed else next((c for c in codes if c > 0), 1)


def _swarm_results(out_dir: Path) -> None:
    """``swarm.csv`` (:func:`peerlearn.results.swarm`) and ``swarm.png``: every peer's accuracy and the swarm's
    (over its live peers' honest nodes) against wall time."""
    from peerlearn.report.plots import plot_swarm
    from peerlearn.report.run_dir import read_run
    from peerlearn.results import swarm

    try:
        merged = swarm(out_dir)
    except FileNotFoundError:  # no peer wrote a row
        return
    merged.to_csv(out_dir / "swarm.csv", index=False)
    runs = {p.name: read_run(p)[1] for p in sorted(out_dir.glob("peer*")) if (p / "metrics.csv").is_file()}
    plot_swarm(runs, merged.to_dict("records"), out_dir / "swarm.png", out_dir.name)


def _peer(args, cfg, deadline: float, churn) -> int:
    from peerlearn.config import ConfigError, to_dict
    from peerlearn.engines.dist_comm import node_blocks
    from peerlearn.engines.join import config_digest, read_secret
    from peerlearn.engines.membership import RunStopped
    from peerlearn.engines.p2p.churn import Left
    from peerlearn.engines.p2p.launch import ADDRESS_FILE
    from peerlearn.engines.p2p.peer import check_config, parse_place, peer_view, run_peer
    from peerlearn.report import choose_run_dir

    if args.peer is None:
        raise ConfigError("config error: --engine p2p: start a swarm with --nproc K, or one peer by hand with "
                          "--peer I/K (and --join MULTIADDR of a live peer)")
    index, peers = parse_place(args.peer)
    check_config(cfg, peers)
    if args.wait_for is not None and not 1 <= args.wait_for <= peers:
        raise ConfigError(f"config error: --wait-for: between 1 and the {peers} peers, got {args.wait_for}")
    allowed = set()
    if args.allow:
        try:
            allowed = {line.strip() for line in Path(args.allow).read_text().splitlines() if line.strip()}
        except OSError as err:
            raise ConfigError(f"config error: --allow: cannot read {args.allow}: {err.strerror}") from None
    has_secret = args.secret_file or os.environ.get("PEERLEARN_SECRET_FILE") or os.environ.get("PEERLEARN_SECRET")
    secret = read_secret(args.secret_file, args.insecure) if (has_secret or not allowed) else b""
    _need_hivemind()
    out_dir = choose_run_dir(args.out, f"{cfg.name}-peer{index}", args.overwrite)
    compute, built = runner.start(cfg)  # every config error surfaces here, before the swarm or the folder
    from peerlearn.engines.p2p.swarm import Admission, Swarm

    run_id = config_digest(to_dict(cfg))
    admission = Admission(run_id, secret, allowed)
    if args.insecure and not allowed:
        err_console.print("warning: --insecure: any peer that reaches this one can join the swarm and send it models",
                          markup=False, highlight=False, soft_wrap=True)
    width = cfg.algorithm.message_values(built.flat.num_params, built.dataset.num_classes)  # the widest row sent
    swarm = Swarm(run_id, admission, width, cfg.num_nodes, initial_peers=args.join,
                  host_maddrs=args.host_maddr, identity_path=args.identity, startup_timeout_s=args.startup_timeout_s)
    try:
        if os.environ.get(ADDRESS_FILE):  # the launcher waits for peer 0's addresses
            tmp = Path(os.environ[ADDRESS_FILE] + ".tmp")
            tmp.write_text("\n".join(swarm.maddrs()) + "\n")
            tmp.replace(os.environ[ADDRESS_FILE])
        rows = node_blocks(cfg.num_nodes, peers)[index]
        view = peer_view(built, rows)
        folder = runner.RunFolder(cfg, out_dir, lines=not console.is_terminal and not args.quiet)
        (out_dir / "peer.json").write_text(json.dumps({
            "peer_id": swarm.peer_id, "index": index, "peers": peers, "nodes": [int(rows[0]), int(rows[-1]) + 1],
            "honest_nodes": int(view.honest_N.sum()),
            "maddrs": swarm.maddrs(), "admission": "open" if admission.open else
            ("secret" if secret else "") + (" and " if secret and allowed else "") + ("allow-list" if allowed else "")},
            indent=1) + "\n")
        say = (lambda line: None) if args.quiet else (lambda line: err_console.print(line, markup=False,
                                                                                     highlight=False))

        def stopped(status, err):
            err_console.print(f"peer {index}: {status}: {err}", markup=False, highlight=False, soft_wrap=True)

        left = []

        def go():
            try:
                run_peer(built, swarm, index, peers, deadline, args.startup_timeout_s, say=say, wait_for=args.wait_for,
                         plan=churn.of(index), **folder.callbacks(view, checkpoints=False))
            except Left as err:  # a planned leave: not a failure
                left.append(str(err))
                say(f"peer {index}: {err}")
            except RuntimeError as err:  # the swarm never formed
                raise RunStopped(str(err)) from None

        status = runner.outcome(go, stopped)
        status = "left" if left and status == "completed" else status
        summary = folder.finish(status, compute)
        if status == "completed" and not args.quiet:
            console.print(f"peer {index}: acc_mean {summary['final'].get('acc_mean', float('nan')):.4f}; "
                          f"results: {out_dir}/", markup=False)
        return runner.EXIT_CODE.get(status, 1)
    finally:
        swarm.close()
