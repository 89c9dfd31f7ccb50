"""The distributed engine: the simulator's algorithms on real processes, over ``torch.distributed``.

Each rank hosts a contiguous block of nodes (``node_blocks``) and runs the *same* algorithm code on
its block's rows; only the ``Comm`` differs. :class:`DistComm` implements the simulator's primitives
with real messages: gossip (``mix``, ``push``, ``gather``) exchanges exactly the rows a rank's nodes
need with point-to-point sends and receives between the ranks that host linked nodes, and
then applies the same arithmetic as :class:`~peerlearn.engines.comm.SimComm` (the difference form
``x + A m - diag(A 1) x``, the same column order), so a run matches the simulator to float rounding;
collectives (``all_reduce_mean``, ``all_gather``) use the process group's. Bytes are counted per
node exactly as in the simulator (a message to a neighbour on the same rank counts as sent).

Every rank draws the simulator's mini-batches for its rows (the sampler draws for all nodes and
keeps some, so the stream does not depend on the split). Rank 0 gathers the models at evaluation
rows only, evaluates them with the simulator's code, keeps the simulated clock, and writes the run.

Ranks may die: every operation runs under a timeout, and the survivors agree on who is left, roll
back to the last round they all completed and go on without the dead ranks' nodes
(:mod:`peerlearn.engines.membership`); the metrics show the departure (``alive_nodes``).

References:
    Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020.
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils._pytree import tree_map

from peerlearn.device import from_host, numpy, scope, to_device
from peerlearn.divergence import watch_run
from peerlearn.engines.dist_comm import DistComm, RowBatches, node_blocks  # noqa: F401 (re-exported)
from peerlearn.engines.comm import load_threat_state, threat_state
from peerlearn.engines.loop import RunRows, run_rounds
from peerlearn.engines.membership import Membership, PeerFailure, RunStopped, connect_store
from peerlearn.engines.run import _clone, departed_faults, is_evaluation_round, make_evaluator, round_network
from peerlearn.rows import freeze_rows
from peerlearn.engines.run import refuse_simulator_only
from peerlearn.spec import ConfigError
from peerlearn.types import Tensor

@dataclass
class _Snapshot:
    """What a rank rolls back to after a failure: its state at the end of a completed round."""

    params_RP: Tensor
    state: object
    sampler: dict
    bytes_N: Tensor
    server_bytes: float
    clock: dict | None
    kept: tuple  # the step metrics since the last row (RunRows.since_last_row)


class _Rank:
    """One rank's share of a run: its nodes' rows and state, the round's network, the rows (rank 0)."""

    def __init__(self, built, membership: Membership, on_eval, on_checkpoint=None, checkpoints: bool = False):
        cfg = built.config
        self.built, self.num_rounds, n = built, cfg.num_rounds, cfg.num_nodes
        self.blocks = node_blocks(n, len(membership.members))
        self.comm = DistComm(self.blocks, membership.group())
        self.comm.set_threat(built.threat)  # model attacks; a data attack is in the batches every rank draws
        self.rows = self.comm.rows
        self.batches = RowBatches(built.batches, self.rows)
        self.lead = membership.rank == 0
        # every rank applies the divergence watch to the reduced loss; rank 0 also to the models, and keeps the rows
        self.book = RunRows(built, make_evaluator(built) if self.lead else None, watch_run(built), on_eval)
        self.clock = built.clock() if self.lead and built.clock is not None else None
        self.known_NP = built.params_NP.clone() if self.lead else None  # the models rank 0 last saw
        self.params_RP = built.params_NP[self.rows].clone()
        self.state = built.algorithm.init(self.params_RP)
        self.bytes_N = torch.zeros(n, dtype=torch.float64)  # every node's bytes, from the per-round reduction
        self.server_bytes = 0.0  # a server's bytes (server averages), likewise
        self.departure_N = np.full(n, cfg.num_rounds + 1)  # the first round each node's rank is gone
        self.faults = built.faults
        self.alive_N = None if self.faults is None else from_host(self.faults.alive(0).copy())
        self.comm.set_topology(built.W)
        self.comm.set_alive(self.alive_N)
        self.snapshots: dict[int, _Snapshot] = {}
        self.on_checkpoint, self.checkpoints = on_checkpoint, checkpoints
        self.die_at = _planned_death(membership.rank)
        self.completed = 0  # the last round this rank completed (what a recovery agrees on)
        self.capture(0)

    def resume(self, snap: dict) -> int:
        """Continue from a checkpoint of the whole run (the simulator's, or one written by :meth:`checkpoint`,
        on any number of ranks): this rank takes its nodes' rows of it; returns its round."""
        built, n = self.built, self.built.config.num_nodes
        built.batches.load_state_dict(snap["sampler"])
        device = self.params_RP.device  # a checkpoint comes from the host
        self.params_RP = snap["params_NP"][self.rows].to(device, copy=True)
        self.state = to_device(tree_map(lambda a: a[self.rows].clone() if _per_node(a, n) else a, snap["state"]), device)
        self.bytes_N = snap["comm"]["bytes_sent_N"].to(device, copy=True)
        self.server_bytes = float(snap["comm"]["bytes_sent_server"])
        load_threat_state(self.comm.threat, snap["comm"])
        if self.clock is not None and snap.get("clock") is not None:
            self.clock.load_state_dict(snap["clock"])
        self.book.resume(snap)
        if self.lead:
            self.known_NP = snap["params_NP"].to(device, copy=True)
        if snap.get("departure_N") is not None:  # nodes whose rank had left stay down
            self.departure_N = np.asarray(snap["departure_N"]).copy()
            self.faults = departed_faults(built, self.departure_N)
        self.alive_N = None if self.faults is None else from_host(self.faults.alive(snap["round"]).copy())
        self.comm.set_alive(self.alive_N)
        self.completed = int(snap["round"])
        self.capture(self.completed)
        return self.completed

    def snapshot(self, round_: int, state) -> dict:
        """Rank 0's checkpoint of the whole run after the row of ``round_`` (``state``: every node's, gathered),
        in the simulator's format: it resumes on the simulator, or on any number of ranks."""
        return {"round": round_, "params_NP": self.known_NP.clone(), "state": state, "sampler": self.built.batches.state_dict(),
                "comm": {"bytes_sent_N": self.bytes_N.clone(), "bytes_sent_server": self.server_bytes,
                         **threat_state(self.comm.threat)},
                "clock": None if self.clock is None else self.clock.state_dict(),
                "departure_N": self.departure_N.copy(), **self.book.checkpoint()}

    def _gather(self, leaf):
        """A per-node state leaf as every node's rows (nodes of departed ranks: zeros, never read again)."""
        if not _per_node(leaf, len(self.rows)):
            return leaf
        wire = leaf.to(torch.uint8) if leaf.dtype == torch.bool else leaf  # gloo moves no bools
        rows, ids = self.comm.gather_rows(wire)
        full = rows.new_zeros(self.built.config.num_nodes, *rows.shape[1:])
        full[ids] = rows
        return full.to(leaf.dtype)

    def capture(self, round_: int) -> None:
        self.snapshots[round_] = _Snapshot(self.params_RP.clone(), tree_map(_clone, self.state),
                                           self.built.batches.state_dict(), self.bytes_N.clone(), self.server_bytes,
                                           None if self.clock is None else self.clock.state_dict(),
                                           self.book.since_last_row())
        self.snapshots.pop(round_ - 2, None)  # ranks are at most one round apart: two snapshots suffice

    def roll_back(self, round_: int) -> None:
        snap = self.snapshots[round_]
        self.params_RP, self.state = snap.params_RP.clone(), tree_map(_clone, snap.state)
        self.built.batches.load_state_dict(snap.sampler)
        self.bytes_N, self.server_bytes = snap.bytes_N.clone(), snap.server_bytes
        self.book.roll_back(snap.kept)
        if self.clock is not None:
            self.clock.load_state_dict(snap.clock)
        self.alive_N = None if self.faults is None else from_host(self.faults.alive(round_).copy())
        self.comm.set_alive(self.alive_N)

    def everyone(self) -> Tensor | None:
        """Every node's model on rank 0 (departed nodes as it last saw them), None elsewhere."""
        models, ids = self.comm.gather_rows(self.params_RP)
        if self.lead:
            self.known_NP[ids] = models
        return self.known_NP

    def record(self, round_: int) -> None:
        """The row of ``round_`` (rank 0; every rank takes part in gathering it), then the checkpoint."""
        report = self.built.algorithm.report
        more = None if report is None else _over_ranks(report(self.state), len(self.rows), self.comm.group)
        everyone = self.everyone()
        state = tree_map(self._gather, self.state) if self.checkpoints else None  # every rank's rows, to rank 0
        if not self.lead or (self.book.rows and self.book.rows[-1]["round"] >= round_):
            return
        self.book.record(round_, everyone, self.comm.alive_N, float(self.bytes_N.sum()) + self.server_bytes,
                         self.clock.metrics() if self.clock is not None else {}, more)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.snapshot(round_, state))

    def depart(self, departed: list[int], back_to: int, group) -> None:
        """Ranks ``departed`` left after round ``back_to``: their nodes are down from the next round."""
        for q in departed:
            self.departure_N[self.blocks[q].numpy()] = back_to + 1
        self.faults = departed_faults(self.built, self.departure_N)
        self.comm.set_group(group)
        self.comm.set_alive(self.alive_N)

    def set_network(self, round_: int) -> None:
        """The round's topology and alive nodes; nodes coming back copy a neighbour's model (wherever it is)."""
        W, rf, copies = round_network(self.built, round_, self.faults)
        self.comm.set_topology(W if W is not None else self.built.W)
        if rf is not None:
            self.alive_N = rf.alive_N
            self.comm.set_alive(rf.alive_N)
            if len(copies[0]):
                models, ids = self.comm.gather_rows(self.params_RP)
                everyone = self.built.params_NP.new_zeros(self.built.config.num_nodes, models.shape[1])
                everyone[ids] = models
                here = np.isin(copies[0], self.rows.numpy())
                self.params_RP = self.params_RP.clone()
                self.params_RP[torch.from_numpy(copies[0][here]) - self.rows[0]] = everyone[torch.from_numpy(copies[1][here])]
                if self.clock is not None:  # the copy's time comes with it
                    self.clock.sync(*copies)

    def models(self) -> Tensor | None:
        return self.everyone()

    def advance(self, round_: int) -> None:
        """One round: the network, the algorithm's step on this rank's rows (down nodes frozen), the final merge
        after the last one, one reduction for the metrics, the bytes and the clock; then a snapshot."""
        if round_ == self.die_at:  # fault injection: a real crash, at a chosen point
            os.kill(os.getpid(), signal.SIGKILL)
        self.set_network(round_)
        built, comm, n = self.built, self.comm, self.built.config.num_nodes
        alive = comm.alive_N
        silent = alive is not None and not bool(alive.any())
        down_R = None if alive is None else ~alive[self.rows]
        drawn0, bytes0, calls0 = built.batches.drawn_N.clone(), comm.bytes_sent_N.clone(), comm.collective_calls
        hops0 = comm.latency_hops
        server0 = comm.bytes_sent_server
        metrics = {"loss": math.nan}
        if not silent:  # the whole network is down: nothing happens this round
            before = (self.params_RP.clone(), tree_map(_clone, self.state)) if down_R is not None else None
            self.params_RP, self.state, metrics = built.algorithm.step(self.state, self.params_RP, self.batches,
                                                                       built.grad_fn, comm)
            if before is not None:  # a down node neither trains nor communicates: its rows stay as they were
                self.params_RP = freeze_rows(self.params_RP, before[0], down_R)
                self.state = freeze_rows(self.state, before[1], down_R)
        # one reduction per round: what the clock needs (per-node compute and bytes, the server's bytes) and
        # the step's metrics (loss first; every rank returns the same keys, each a mean over its nodes or the
        # same value on every rank: either way the mean weighted by the nodes is the simulator's)
        keys = ["loss", *sorted(k for k in metrics if k != "loss")]
        delta = torch.zeros(2 * n + 1 + len(keys), dtype=torch.float64)
        delta[self.rows] = (built.batches.drawn_N - drawn0)[self.rows].double()
        delta[n + self.rows] = comm.bytes_sent_N - bytes0
        delta[2 * n] = comm.bytes_sent_server - server0
        delta[2 * n + 1:] = torch.tensor([float(metrics[k]) * len(self.rows) for k in keys], dtype=torch.float64)
        comm.group.all_reduce(delta)
        self.book.step(round_, dict(zip(keys, (delta[2 * n + 1:] / comm.num_hosted).tolist())), keep=self.lead,
                       watch=not silent)
        self.bytes_N += delta[n:2 * n]
        self.server_bytes += float(delta[2 * n])
        if self.clock is not None:
            self.clock.advance(numpy(delta[:n]), numpy(delta[n:2 * n]), comm.W, comm.collective_calls > calls0,
                               float(delta[2 * n]), None if alive is None else numpy(alive),
                               hops=comm.latency_hops - hops0)
        self.completed = round_
        self.capture(round_)


def _per_node(leaf, num_rows: int) -> bool:
    """A state leaf that holds a row per node (the rule :func:`peerlearn.rows.freeze_rows` uses)."""
    return isinstance(leaf, Tensor) and leaf.ndim >= 1 and leaf.shape[0] == num_rows


def _over_ranks(report: dict, num_rows: int, group) -> dict:
    """A rank's ``report`` (over its ``num_rows`` nodes) combined over the ranks, every rank reporting the same
    keys: a ``*_mean`` key (a mean over nodes) as the node-weighted mean, any other at its largest."""
    keys = sorted(report)
    mine = torch.tensor([float(num_rows), *(float(report[k]) for k in keys)], dtype=torch.float64)
    every = torch.stack(group.all_gather(mine))  # [ranks, 1 + keys]
    rows, values = every[:, 0], every[:, 1:]
    mean = (values * rows[:, None]).sum(0) / rows.sum()
    return {k: float(mean[i] if k.endswith("_mean") else values[:, i].max()) for i, k in enumerate(keys)}


def simulate_distributed(built, membership: Membership, on_eval: Callable[[dict], None] | None = None,
                         on_round: Callable[[int, dict], None] | None = None,
                         on_finish: Callable[[Tensor], None] | None = None,
                         log: Callable[[str], None] | None = None, on_checkpoint: Callable[[dict], None] | None = None,
                         checkpoints: bool = False, resume: dict | None = None) -> list[dict]:
    """Run ``built`` as launch rank ``membership.rank`` of ``len(membership.members)``.

    Rank 0 evaluates, keeps the simulated clock and returns the rows (other ranks return an empty
    list); the callbacks are called on rank 0 only; ``on_finish`` gets every node's final model.
    The run's faults are the simulator's (the same nodes down, the same links lost, returning nodes
    copying the same neighbour). When ranks die, the survivors agree on the last round they all
    completed, roll back to it, and go on without the departed ranks' nodes
    (:mod:`peerlearn.engines.membership`): from the next round those nodes are down, exactly as a crash
    in the simulator's fault model. Their models stay in the evaluation as rank 0 last saw them;
    ``alive_nodes`` and ``acc_alive_mean`` show the departure.

    With ``checkpoints`` (on every rank), rank 0 hands ``on_checkpoint`` a snapshot of the whole run after
    each row, in the simulator's format; ``resume`` (every rank) continues from such a snapshot, or from
    the simulator's, with the same rows as the uninterrupted run (``wall_time_s`` aside, and to float
    rounding where the run all-reduces).
    """
    if len(membership.members) > built.config.num_nodes:
        raise ValueError(f"{len(membership.members)} ranks for {built.config.num_nodes} nodes: every rank needs "
                         "at least one node")
    with scope(built.device, built.config.deterministic):
        me = _Rank(built, membership, on_eval, on_checkpoint, checkpoints)
        say = log or (lambda message: None)
        try:
            return run_rounds(me, built, me.book, on_round if me.lead else None, on_finish if me.lead else None,
                              resume, PeerFailure, lambda failure, round_: _recover(me, membership, failure, round_, say))
        except KeyboardInterrupt as err:  # Ctrl-C: say where this rank stopped (the caller prints one line)
            err.completed = me.completed
            raise


def use_local_gpu(cfg) -> None:
    """Make this rank's GPU (:func:`peerlearn.device.rank_device` by ``LOCAL_RANK``) torch's current one, so
    that the config's ``cuda`` (or ``auto``) means it; nothing on a CPU run."""
    from peerlearn.device import rank_device

    index = rank_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if index is not None:
        torch.cuda.set_device(index)


def _recover(me: _Rank, membership: Membership, failure: PeerFailure | None, round_: int, say) -> int:
    """After ``failure``: agree with the survivors on the last round all completed, roll back to it and go
    on without the departed ranks (a second death during the recovery: recover again); returns that round."""
    while failure is not None:
        say(f"round {round_}: {failure}; waiting for the survivors (timeout {membership.timeout_s:g} s)")
        try:
            members, departed, back_to = membership.recover(me.completed, me.comm.group)
            if 0 in departed:
                raise RunStopped(f"rank 0, which evaluates and writes the run, left at round {back_to + 1}; "
                                 "the run directory keeps every row written before")
            me.depart(departed, back_to, membership.group())
            me.roll_back(back_to)
            me.completed = back_to
            if departed:
                say(f"ranks {departed} left (nodes {_ranges(departed, me.blocks)}); {len(members)} ranks go on "
                    f"from round {back_to + 1}")
            else:
                say(f"no rank left: one was busier than the timeout ({membership.timeout_s:g} s, e.g. "
                    f"evaluating); the group was rebuilt and goes on from round {back_to + 1} (raise --timeout-s)")
            if is_evaluation_round(me.built.config, back_to):
                me.record(back_to)  # its row may be missing (the failure hit the evaluation)
            failure = None
        except PeerFailure as again:
            failure = again
    return back_to


def _planned_death(rank: int) -> int | None:
    """``PEERLEARN_KILL=RANK:ROUND[,RANK:ROUND...]``: each listed rank kills itself (SIGKILL) as its
    round starts, for reproducible crash experiments and tests; unset, nothing happens."""
    planned = os.environ.get("PEERLEARN_KILL", "").strip()
    deaths = {}
    for item in filter(None, planned.split(",")):
        try:
            who, when = (int(v) for v in item.split(":"))
        except ValueError:
            raise ValueError(f"PEERLEARN_KILL must be RANK:ROUND[,RANK:ROUND...], got {planned!r}") from None
        deaths[who] = when
    return deaths.get(rank)


def _ranges(ranks: list[int], blocks: list[Tensor]) -> str:
    return ", ".join(f"{int(blocks[q][0])}..{int(blocks[q][-1])}" for q in ranks)


def check_config(cfg, world: int) -> None:
    """What the distributed engine runs; a ConfigError naming the field otherwise (before any training)."""
    from peerlearn.algorithms.base import ALGORITHMS

    a = cfg.algorithm
    if a.capabilities.asynchronous:
        raise ConfigError(f"config error: algorithm.name: {a.name} is asynchronous: on real processes it needs the "
                          "peer-to-peer engine, which is not built yet (use the simulator)")
    if "distributed" not in a.capabilities.engines:
        runs = [name for name, c in ALGORITHMS.items() if "distributed" in c.capabilities.engines]
        raise ConfigError(f"config error: algorithm.name: the distributed engine runs {', '.join(runs)}; "
                          f"got {a.name} (use the simulator)")
    refuse_simulator_only(cfg, "distributed")
    if world > cfg.num_nodes:
        raise ConfigError(f"config error: num_nodes: {world} ranks need at least {world} nodes, got {cfg.num_nodes}")


LAUNCH_HELP = ("launch with --nproc N (one machine), or start every rank by hand with RANK, WORLD_SIZE, "
               "MASTER_ADDR, MASTER_PORT and a shared PEERLEARN_SECRET (see the README)")


def launch_environment() -> tuple[int, int]:
    """(rank, world size) from the ``torch.distributed`` environment; a ConfigError saying how to launch."""
    if any(k not in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_PORT")):
        raise ConfigError(f"config error: --engine distributed: {LAUNCH_HELP}")
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        int(os.environ["MASTER_PORT"])
    except ValueError:
        raise ConfigError("config error: RANK, WORLD_SIZE and MASTER_PORT must be integers") from None
    if not 0 <= rank < world:
        raise ConfigError(f"config error: RANK: between 0 and WORLD_SIZE - 1 = {world - 1}, got {rank}")
    return rank, world


def elastic_warning() -> str | None:
    """The warning for ranks started by torchrun's elastic agent, whose c10d rendezvous unpickles what its
    store holds (anyone who reaches that port runs code on every machine); None otherwise."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or os.environ.get("LOCAL_RANK", "0") != "0":
        return None
    return ("warning: started by torchrun: its elastic rendezvous unpickles what its store holds, so anyone who "
            "reaches its port can run code on this machine; launch with --nproc N on one machine, or by hand "
            "across machines (README, docs/security.md)")


def join_from_env(cfg_dict: dict, secret: bytes, timeout_s: float = 60.0, startup_timeout_s: float = 300.0,
                  say: Callable[[str], None] = lambda message: None) -> Membership:
    """Join the launch that ``peerlearn run --nproc`` (or a launch by hand, or torchrun) describes in the
    environment, through :mod:`peerlearn.engines.join`: rank 0 admits the ranks that prove ``secret`` and
    run the same config (``say`` gets a line for each one it refuses). Reaching the store, joining and
    forming the first group wait up to ``startup_timeout_s``, everything after ``timeout_s``."""
    from peerlearn import __version__
    from peerlearn.engines.join import config_digest, join

    rank, world = launch_environment()
    try:
        store = connect_store(max(timeout_s, startup_timeout_s))
    except (OSError, RuntimeError) as err:  # the port is taken (rank 0), or nobody listens there (the others)
        where = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ['MASTER_PORT']}"
        raise RunStopped(f"the launch's store at {where}: {str(err).strip().splitlines()[0][:300]}") from None
    expect = {"world": world, "version": __version__, "config": config_digest(cfg_dict)}
    session, keeper = join(store, rank, world, secret, expect, startup_timeout_s, say)
    return Membership(session, rank, world, timeout_s, startup_timeout_s=startup_timeout_s, keeper=keeper)
