"""One peer of a swarm: its block of nodes trained with the simulator's algorithm code, rounds on wall-clock
time with a deadline per exchange, and its own rows (a :func:`~peerlearn.engines.loop.run_rounds` driver).

Every peer draws the simulator's mini-batches for its rows (the shared sampler draws for all nodes and
keeps some), so a swarm whose messages all arrive computes what the simulator computes. Each peer
evaluates its own nodes and writes its own run folder; ``peerlearn.results.load`` and ``peerlearn compare``
read a swarm's folders together.
"""

from __future__ import annotations

import time
from typing import Callable

from peerlearn.divergence import watch_run
from peerlearn.engines.dist_comm import RowBatches, node_blocks
from peerlearn.engines.distributed import _planned_death
from peerlearn.engines.loop import RunRows, run_rounds
from peerlearn.engines.p2p.churn import churn_point
from peerlearn.engines.p2p.comm import P2PComm
from peerlearn.engines.run import make_evaluator, refuse_simulator_only, round_network
from peerlearn.spec import ConfigError
from peerlearn.types import Tensor


def check_config(cfg, peers: int) -> None:
    """What the p2p engine runs; a ConfigError naming the field otherwise (before any peer starts)."""
    from peerlearn.algorithms.base import ALGORITHMS

    a = cfg.algorithm  # (model attacks on asynchronous sends are refused by the config itself, in every engine)
    if "p2p" not in a.capabilities.engines:
        runs = [name for name, c in ALGORITHMS.items() if "p2p" in c.capabilities.engines]
        raise ConfigError(f"config error: algorithm.name: the p2p engine runs {', '.join(runs)} so far; got {a.name} "
                          "(use the simulator or --engine distributed)")
    if a.capabilities.asynchronous and cfg.topology.schedule.name != "static":
        raise ConfigError(f"config error: topology.schedule: {a.name} on a swarm picks among the live neighbours of a "
                          f"static graph; got {cfg.topology.schedule.name}")
    if cfg.faults.active:
        raise ConfigError("config error: faults: a swarm's faults are real (peers that die or leave): remove the "
                          "faults section for --engine p2p")
    refuse_simulator_only(cfg, "p2p")
    if cfg.threat.space == "update":
        raise ConfigError("config error: threat.space: an attack on a swarm sees what its peer saw, in model space; "
                          "update space runs on the simulator and --engine distributed")
    if peers > cfg.num_nodes:
        raise ConfigError(f"config error: num_nodes: {peers} peers need at least {peers} nodes, got {cfg.num_nodes}")


def parse_place(text: str) -> tuple[int, int]:
    """``I/K`` (this peer's index and the number of peers) as two integers; ConfigError otherwise."""
    try:
        index, peers = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"config error: --peer: I/K (this peer's index and the number of peers), got {text!r}") from None
    if not 0 <= index < peers:
        raise ConfigError(f"config error: --peer: the index must be between 0 and {peers - 1}, got {index}")
    return index, peers


def peer_view(built, rows: Tensor):
    """``built`` as this peer sees it: its rows are the run (their honest mask, their local test splits)."""
    parts = built.local_test_parts
    cfg = built.config.model_copy(update={"num_nodes": len(rows)})  # a view of the run, not a config to validate
    return built._replace(config=cfg, honest_N=built.honest_N[rows], eval_N=None, params_NP=built.params_NP[rows],
                          local_test_parts=None if parts is None else [parts[int(i)] for i in rows])


def wait_for_peers(swarm, peers: int, timeout_s: float, say: Callable[[str], None],
                   join_running: bool = False) -> dict[str, dict]:
    """The roster once ``peers`` admitted peers with distinct indices are in it (the run starts together), or,
    with ``join_running``, at once when the swarm is already running (a peer that joins late)."""
    deadline, shown = time.monotonic() + timeout_s, -1
    while True:
        roster = swarm.roster()
        indices = {e.get("index") for e in roster.values()}
        if len(indices) >= peers or (join_running and any(e.get("started") for e in roster.values())):
            return roster
        if len(indices) != shown:
            say(f"waiting for peers: {len(indices)} of {peers} in the roster")
            shown = len(indices)
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(indices)} of {peers} peers joined within {timeout_s:g} s")
        time.sleep(0.2)


class _Peer:
    def __init__(self, built, swarm, index: int, peers: int, roster: dict, deadline_s: float, on_eval, plan: dict):
        cfg = built.config
        self.built, self.swarm, self.index = built, swarm, index
        self.rows = node_blocks(cfg.num_nodes, peers)[index]
        self.view = peer_view(built, self.rows)
        self.comm = P2PComm(swarm, self.rows, cfg.num_nodes, built.W, roster, deadline_s)
        self.comm.set_threat(built.threat)  # model attacks; a data attack is in the batches every peer draws
        self.batches = RowBatches(built.batches, self.rows)
        self.book = RunRows(self.view, make_evaluator(self.view), watch_run(self.view), on_eval)
        self.params_RP = built.params_NP[self.rows].clone()
        self.state = built.algorithm.init(self.params_RP)
        self.plan = {**({"crash": _planned_death(index)} if _planned_death(index) else {}), **plan}  # also
        # PEERLEARN_KILL=PEER:ROUND, as for ranks
        self.roster_at = time.monotonic()

    def models(self) -> Tensor:
        return self.params_RP

    def _still_there(self, found: dict) -> dict:
        """The roster without the peers that left it *and* stopped sending (a DHT lookup that missed a record is
        not a departure)."""
        c = self.comm
        left = {p for p, e in found.items() if e.get("left")} | set(self.swarm.inbox.departed)
        return {**{p: e for p, e in found.items() if p not in left},
                **{p: e for p, e in c.roster.items() if p not in found and p not in left
                   and c.misses.get(p, 0) < c.patience}}

    def _leave(self, round_: int) -> None:
        self.swarm.leave(self.comm.peers, round_, self.params_RP.shape[1], self.comm.deadline_s)

    def record(self, round_: int) -> None:
        s, c = self.swarm, self.comm
        more = {"peers_seen": len(c.roster), "dropped_messages": c.dropped, "late_messages": s.inbox.late,
                "unsent_messages": sum(s.unsent.values()), "refused_messages": s.refused_messages, "refused_peers": len(s.admission.refused),
                "payload_bytes_sent": s.payload_sent, "overhead_bytes_sent": s.overhead_sent,
                "bytes_received": s.inbox.bytes_received}
        report = self.built.algorithm.report  # e.g. the privacy spent: the worst of this peer's nodes
        more.update(report(self.state) if report is not None else {})
        self.book.record(round_, self.params_RP, None, float(c.bytes_sent_N.sum()) + c.bytes_sent_server, {}, more)

    def advance(self, round_: int) -> None:
        churn_point(self.plan, round_, self.book, self.record, self._leave)  # a crash or a leave, when planned
        c = self.comm
        if (time.monotonic() - self.roster_at > 5 * c.deadline_s  # who is still there
                or set(self.swarm.inbox.departed) & set(c.roster)):
            c.set_roster(self._still_there(self.swarm.roster(with_left=True)))
            self.roster_at = time.monotonic()
        W = round_network(self.built, round_)[0]  # a time-varying topology's W of this round (faults are real here)
        if W is not None:
            self.comm.set_topology(W)
        self.comm.start_round(round_)
        self.params_RP, self.state, metrics = self.built.algorithm.step(self.state, self.params_RP, self.batches,
                                                                        self.built.grad_fn, self.comm)
        self.book.step(round_, metrics, nan_means_idle=True)  # a peer's loss is its nodes': NaN when none trained


def run_peer(built, swarm, index: int, peers: int, deadline_s: float = 10.0, startup_timeout_s: float = 120.0,
             on_eval: Callable[[dict], None] | None = None, on_round: Callable[[int, dict], None] | None = None,
             on_finish: Callable[[Tensor], None] | None = None, say: Callable[[str], None] = lambda line: None,
             wait_for: int | None = None, plan: dict[str, int] | None = None) -> list[dict]:
    """Run peer ``index`` of ``peers``: announce its nodes, wait for ``wait_for`` peers (default all; under an
    asynchronous algorithm a swarm already running is joined at once), then the rounds; returns its rows.
    ``plan``: its churn events (:meth:`~peerlearn.engines.p2p.churn.Churn.of`): a peer that joins at a round
    stays out of the roster until the swarm's clock reaches it; one that leaves raises ``Left`` after its round."""
    from peerlearn.device import scope
    from peerlearn.engines.p2p.gossip import GossipPeer, wait_for_round

    plan = plan or {}
    rows = node_blocks(built.config.num_nodes, peers)[index]
    entry, ttl = {"index": index, "nodes": [int(rows[0]), int(rows[-1]) + 1]}, max(10.0, 5 * deadline_s)
    asynchronous = built.config.algorithm.capabilities.asynchronous
    if "join" in plan:  # a late joiner: out of the roster until the swarm's round plan["join"]
        wait_for_round(swarm, built, plan["join"], startup_timeout_s, say)
    running = any(e.get("started") for e in swarm.roster().values())  # before this peer is in the roster
    swarm.announce(entry, ttl_s=ttl)
    roster = wait_for_peers(swarm, peers if wait_for is None else wait_for, startup_timeout_s, say, asynchronous)
    started = [e["started"] for e in roster.values() if isinstance(e.get("started"), (int, float))]
    swarm_start = min(started) if started else time.time()  # the swarm's clock: its first peer's start
    swarm.announce({**entry, "started": swarm_start}, ttl_s=ttl)
    say(f"peer {index}/{peers} ({swarm.peer_id}): nodes {int(rows[0])}..{int(rows[-1])}; {len(roster)} peers")
    with scope(built.device, built.config.deterministic):
        if asynchronous:
            view = peer_view(built, rows)
            book = RunRows(view, make_evaluator(view), watch_run(view), on_eval)
            me = GossipPeer(built, swarm, rows, view, book, roster, swarm_start, joining=running, plan=plan)
            if me.join_round:
                say(f"peer {index} joins the running swarm at round {me.join_round}")
            return run_rounds(me, view, book, on_round, on_finish, resume={} if me.join_round else None)
        me = _Peer(built, swarm, index, peers, roster, deadline_s, on_eval, plan)
        return run_rounds(me, me.view, me.book, on_round, on_finish)
