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

import os
import signal
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils._pytree import tree_map

from peerlearn.divergence import watch_run
from peerlearn.engines.dist_comm import DistComm, RowBatches, node_blocks  # noqa: F401 (re-exported)
from peerlearn.engines.membership import Membership, PeerFailure, RunStopped, connect_store
from peerlearn.engines.loop import RunRows
from peerlearn.engines.run import _clone, is_evaluation_round, make_evaluator
from peerlearn.spec import ConfigError
from peerlearn.types import Tensor

@dataclass
class _Snapshot:
    """What a rank rolls back to after a failure: its state at the end of a completed round."""

    params_RP: Tensor
    state: object
    sampler: dict
    bytes_N: Tensor
    clock: dict | None
    kept: tuple  # the step metrics since the last row (RunRows.since_last_row)


def simulate_distributed(built, membership: Membership, on_eval: Callable[[dict], None] | None = None,
                         on_round: Callable[[int, dict], None] | None = None,
                         on_finish: Callable[[Tensor], None] | None = None,
                         log: Callable[[str], None] | None = None) -> list[dict]:
    """Run ``built`` as launch rank ``membership.rank`` of ``len(membership.members)``.

    Rank 0 evaluates, keeps the simulated clock and returns the rows (other ranks return an empty
    list); the callbacks are called on rank 0 only; ``on_finish`` gets every node's final model.
    When ranks die, the survivors agree on the last round they all completed, roll back to it, and
    go on without the departed ranks' nodes (:mod:`peerlearn.engines.membership`): from the next
    round those nodes are down, exactly as a crash in the simulator's fault model (their links are
    removed and the weights recomputed with the run's mixing rule). Their models stay in the
    evaluation as rank 0 last saw them; ``alive_nodes`` and ``acc_alive_mean`` show the departure.
    """
    cfg = built.config
    n, num_rounds = cfg.num_nodes, cfg.num_rounds
    if len(membership.members) > n:
        raise ValueError(f"{len(membership.members)} ranks for {n} nodes: every rank needs at least one node")
    say = log or (lambda message: None)
    blocks = node_blocks(n, len(membership.members))
    comm = DistComm(blocks, membership.group())
    comm.set_threat(built.threat)  # model attacks; a data attack is in the batches every rank draws
    rows = comm.rows
    batches = RowBatches(built.batches, rows)
    lead = membership.rank == 0
    # every rank applies the divergence watch to the reduced loss; rank 0 also to the models, and keeps the rows
    book = RunRows(built, make_evaluator(built) if lead else None, watch_run(built), on_eval)
    clock = built.clock() if lead and built.clock is not None else None
    known_NP = built.params_NP.clone() if lead else None  # the models rank 0 last saw (departed nodes keep theirs)
    params_RP = built.params_NP[rows].clone()
    state = built.algorithm.init(params_RP)
    bytes_N = torch.zeros(n, dtype=torch.float64)  # every node's bytes, from the per-round reduction
    departure_N = np.full(n, num_rounds + 1)  # the first round each node is gone
    network = _Network(built, departure_N)
    snapshots: dict[int, _Snapshot] = {}

    def capture(round_: int) -> None:
        snapshots[round_] = _Snapshot(params_RP.clone(), tree_map(_clone, state), built.batches.state_dict(),
                                      bytes_N.clone(), None if clock is None else clock.state_dict(),
                                      book.since_last_row())
        snapshots.pop(round_ - 2, None)  # ranks are at most one round apart: two snapshots suffice

    def record(round_: int) -> None:
        everyone, ids = comm.gather_rows(params_RP)
        if not lead or (book.rows and book.rows[-1]["round"] >= round_):
            return
        known_NP[ids] = everyone
        book.record(round_, known_NP, comm.alive_N, float(bytes_N.sum()), clock.metrics() if clock is not None else {})

    die_at = _planned_death(membership.rank)
    completed, round_ = 0, 0
    capture(0)
    try:
        while round_ <= num_rounds + 1:
            try:
                if round_ == 0:
                    record(0)
                elif round_ <= num_rounds:
                    if round_ == die_at:  # fault injection: a real crash, at a chosen point
                        os.kill(os.getpid(), signal.SIGKILL)
                    comm.set_topology(network.at(round_))
                    drawn0, bytes0, calls0 = built.batches.drawn_N.clone(), comm.bytes_sent_N.clone(), comm.collective_calls
                    params_RP, state, metrics = built.algorithm.step(state, params_RP, batches, built.grad_fn, comm)
                    # one reduction per round: the step's metrics (loss first; every rank returns the same keys),
                    # and what the clock needs (per-node compute and bytes)
                    keys = ["loss", *sorted(k for k in metrics if k != "loss")]
                    delta = torch.zeros(2 * n + len(keys), dtype=torch.float64)
                    delta[rows] = (built.batches.drawn_N - drawn0)[rows].double()
                    delta[n + rows] = comm.bytes_sent_N - bytes0
                    delta[2 * n:] = torch.tensor([float(metrics[k]) * len(rows) for k in keys], dtype=torch.float64)
                    comm.group.all_reduce(delta)
                    means = (delta[2 * n:] / comm.num_alive).tolist()
                    book.step(round_, dict(zip(keys, means)), keep=lead)
                    bytes_N += delta[n:2 * n]
                    if lead:
                        if clock is not None:
                            clock.advance(delta[:n].numpy(), delta[n:2 * n].numpy(), comm.W, comm.collective_calls > calls0,
                                          0.0, None if comm.alive_N is None else comm.alive_N.numpy())
                    completed = round_
                    capture(round_)
                    if is_evaluation_round(cfg, round_):
                        record(round_)
                    if lead and on_round is not None:
                        on_round(round_, book.rows[-1])
                else:
                    everyone, ids = comm.gather_rows(params_RP)
                    if lead:
                        known_NP[ids] = everyone
                        if on_finish is not None:
                            on_finish(known_NP)
                round_ += 1
            except PeerFailure as failure:
                while failure is not None:  # a second death during the recovery: recover again
                    say(f"round {round_}: {failure}; waiting for the survivors (timeout {membership.timeout_s:g} s)")
                    try:
                        members, departed, back_to = membership.recover(completed, comm.group)
                        if 0 in departed:
                            raise RunStopped(f"rank 0, which evaluates and writes the run, left at round {back_to + 1}; "
                                               "the run directory keeps every row written before")
                        for q in departed:
                            departure_N[blocks[q].numpy()] = back_to + 1
                        network = _Network(built, departure_N)
                        snap = snapshots[back_to]
                        params_RP, state = snap.params_RP.clone(), tree_map(_clone, snap.state)
                        built.batches.load_state_dict(snap.sampler)
                        bytes_N = snap.bytes_N.clone()
                        book.roll_back(snap.kept)
                        if clock is not None:
                            clock.load_state_dict(snap.clock)
                        completed, round_ = back_to, back_to + 1
                        comm.set_group(membership.group())
                        if departed:
                            say(f"ranks {departed} left (nodes {_ranges(departed, blocks)}); {len(members)} ranks go on "
                                f"from round {round_}")
                        else:
                            say(f"no rank left: one was busier than the timeout ({membership.timeout_s:g} s, e.g. "
                                f"evaluating); the group was rebuilt and goes on from round {round_} (raise --timeout-s)")
                        if is_evaluation_round(cfg, back_to):
                            record(back_to)  # its row may be missing (the failure hit the evaluation)
                        failure = None
                    except PeerFailure as again:
                        failure = again
    except KeyboardInterrupt as err:  # Ctrl-C: say where this rank stopped (the caller prints one line)
        err.completed = completed
        raise
    return book.rows


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


class _Network:
    """Each round's global mixing matrix: the schedule's (or the static one), without the links of
    nodes that have left, re-weighted by the run's mixing rule as the simulator's crash faults are
    (Metropolis-Hastings when the rule is ``uniform``, which needs a regular graph)."""

    def __init__(self, built, departure_N: np.ndarray):
        from peerlearn.topology.mixing import metropolis_hastings_weights
        from peerlearn.world.faults import FaultPlan

        self.built, self.cache = built, (None, None)
        self.plan = None
        if (departure_N <= built.config.num_rounds).any():
            rounds = np.arange(built.config.num_rounds + 1)[:, None]
            # weights that need a regular graph (uniform) fall back to Metropolis-Hastings: a departure breaks it
            regular = built.config.topology.mixing.capabilities.regular_only
            self.plan = FaultPlan(rounds < departure_N[None, :],
                                  metropolis_hastings_weights if regular else built.mixing)

    def at(self, round_: int):
        base = self.built.schedule(round_) if self.built.schedule is not None else self.built.W
        if self.plan is None:
            return base
        if self.cache[0] is not base:  # a static topology is re-weighted once, not every round
            self.cache = (base, self.plan.at(round_, base).W)
        return self.cache[1]


def _ranges(ranks: list[int], blocks: list[Tensor]) -> str:
    return ", ".join(f"{int(blocks[q][0])}..{int(blocks[q][-1])}" for q in ranks)


def check_config(cfg, world: int) -> None:
    """What the distributed engine runs; a ConfigError naming the field otherwise (before any training)."""
    from peerlearn.algorithms.base import ALGORITHMS

    a = cfg.algorithm
    if "distributed" not in a.capabilities.engines:
        runs = [name for name, c in ALGORITHMS.items() if "distributed" in c.capabilities.engines]
        raise ConfigError(f"config error: algorithm.name: the distributed engine runs {', '.join(runs)}; "
                          f"got {a.name} (use the simulator)")
    for field, on in (("faults", cfg.faults.active),
                      ("privacy.clip", cfg.privacy.active),
                      ("algorithm.server_period", a.uses_server),
                      ("algorithm.final_merge", a.final_merge_enabled)):
        if on:
            raise ConfigError(f"config error: {field}: not available with --engine distributed yet (use the simulator)")
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
