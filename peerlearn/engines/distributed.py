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
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils._pytree import tree_map

from peerlearn.aggregators.mean import mean
from peerlearn.engines.comm import SimComm, padded_neighbours, torch_csr
from peerlearn.engines.membership import Group, Membership, PeerFailure, RunStopped, connect_store
from peerlearn.engines.run import Evaluator, _clone, evaluation_row, is_evaluation_round, step_means
from peerlearn.spec import ConfigError
from peerlearn.types import Tensor

# algorithms whose step only touches its own rows and the Comm (run unchanged on a block of nodes)
def node_blocks(num_nodes: int, world: int) -> list[Tensor]:
    """The global ids of each rank's nodes: contiguous blocks whose sizes differ by at most one."""
    return [torch.from_numpy(b.astype(np.int64)) for b in np.array_split(np.arange(num_nodes), world)]


class RowBatches:
    """A rank's view of the shared :class:`~peerlearn.data.batching.NodeSampler`: the rows of its nodes."""

    def __init__(self, sampler, rows: Tensor):
        self.sampler, self.rows = sampler, rows

    def next(self, rows: Tensor | None = None):
        return self.sampler.next(self.rows if rows is None else self.rows[rows])


class DistComm:
    """The :class:`~peerlearn.types.Comm` of one rank: ``x`` arguments hold this rank's rows only.

    Args:
        blocks: every launch rank's node ids (:func:`node_blocks`); this rank's are ``rows``.
        group: the members' :class:`~peerlearn.engines.membership.Group`; nodes hosted by a launch
            rank that is no longer a member are gone (``alive_N``): collectives run without them
            and the topology must not link them (the engine removes their links).

    Attributes:
        bytes_sent_N: cumulative bytes sent by each of the rank's nodes (float64).
    """

    def __init__(self, blocks: list[Tensor], group: Group):
        self.blocks = blocks
        self.num_global = sum(len(b) for b in blocks)
        self.rows = blocks[group.launch_rank]
        self.num_nodes = len(self.rows)
        self.bytes_sent_N = torch.zeros(self.num_nodes, dtype=torch.float64)
        self.bytes_sent_server = 0.0
        self.collective_calls = 0
        self.set_group(group)

    def set_group(self, group: Group) -> None:
        """Use ``group`` (after a re-formation): the nodes of launch ranks outside it are gone."""
        self.group = group
        self.host_N = torch.full((self.num_global,), -1, dtype=torch.int64)  # member hosting each node
        for q, launch_rank in enumerate(group.members):
            self.host_N[self.blocks[launch_rank]] = q
        alive = self.host_N >= 0
        self.alive_N = None if bool(alive.all()) else alive
        self.num_alive = int(alive.sum())
        self.W = None  # re-plan the exchanges at the next set_topology

    # -- topology ---------------------------------------------------------------------------
    def set_topology(self, W: sp.csr_array) -> None:
        """Use the global mixing matrix ``W`` (the same on every rank) and plan the round's exchanges."""
        if W is self.W:
            return
        W = sp.csr_array(W)
        off = sp.csr_array(W - sp.diags_array(W.diagonal(), format="csr"))
        off.eliminate_zeros()
        self.W = W
        lo, hi = int(self.rows[0]), int(self.rows[-1]) + 1
        mine = off[lo:hi]
        need = np.unique(mine.indices)  # global ids whose rows this rank's nodes receive, sorted
        owner = self.host_N.numpy()
        if (owner[need] < 0).any():
            raise ValueError("DistComm: the topology links nodes whose rank has left the run")
        position = np.full(self.num_global, -1, dtype=np.int64)
        position[need] = np.arange(len(need))
        local = sp.csr_array((mine.data, position[mine.indices], mine.indptr), shape=(hi - lo, len(need)))
        self._off = torch_csr(local)
        self._rowsum_R1 = torch.from_numpy(np.asarray(mine.sum(axis=1), dtype=np.float32).reshape(-1, 1))
        self._diag_R1 = torch.from_numpy(np.asarray(W.diagonal()[lo:hi], dtype=np.float32).reshape(-1, 1))
        self._num_need = len(need)
        me = self.group.rank
        self._recv = {}  # member -> positions (in need) of the rows it sends us, in global-id order
        self._own = (torch.from_numpy(np.flatnonzero(owner[need] == me)),
                     torch.from_numpy(need[owner[need] == me] - lo))
        for q in range(self.group.size):
            if q != me and (pos := np.flatnonzero(owner[need] == q)).size:
                self._recv[q] = torch.from_numpy(pos)
        self._send = {}  # member -> local indices of our rows its nodes need, in global-id order
        cols = off.tocsc()
        for q, launch_rank in enumerate(self.group.members):
            if q == me:
                continue
            block = self.blocks[launch_rank]
            theirs = cols[int(block[0]):int(block[-1]) + 1, lo:hi]
            senders = np.flatnonzero(np.diff(theirs.tocsc().indptr))
            if senders.size:
                self._send[q] = torch.from_numpy(senders)
        self._out_degree_R = torch.from_numpy(np.bincount(off.indices, minlength=self.num_global)[lo:hi]).double()
        # padded neighbour table for gather(), as the simulator's: width = the largest degree anywhere
        degree = np.diff(off.indptr)
        k = int(degree.max()) if self.num_global else 0
        self._nbr_RK, self._valid_RK = padded_neighbours(local.indptr, local.indices, k, np.zeros(hi - lo))

    # -- exchange ---------------------------------------------------------------------------------
    def _exchange(self, x_RP: Tensor) -> Tensor:
        """The rows this rank's nodes receive (one per needed sender, in global-id order)."""
        out = torch.empty(self._num_need, x_RP.shape[1], dtype=x_RP.dtype)
        pos, idx = self._own
        out[pos] = x_RP[idx]
        inbox = {q: torch.empty(len(pos), x_RP.shape[1], dtype=x_RP.dtype) for q, pos in self._recv.items()}
        self.group.exchange({q: x_RP[idx] for q, idx in self._send.items()}, inbox)
        for q, buf in inbox.items():
            out[self._recv[q]] = buf
        return out

    def _count_neighbour_send(self, x_RP: Tensor, message_bytes) -> None:
        size = self.message_bytes(x_RP) if message_bytes is None else message_bytes
        self.bytes_sent_N += self._out_degree_R * size

    message_bytes = staticmethod(SimComm.message_bytes)

    # -- primitives (SimComm's, on this rank's rows) ------------------------------------------------
    def mix(self, x_RP: Tensor, message_bytes=None) -> Tensor:
        self._count_neighbour_send(x_RP, message_bytes)
        received = self._exchange(x_RP)
        off, rowsum = self._off.to(x_RP.dtype), self._rowsum_R1.to(x_RP.dtype)
        return torch.addmm(x_RP, off, received).addcmul_(rowsum, x_RP, value=-1.0)

    def push(self, x_RP: Tensor, message_bytes=None) -> Tensor:
        self._count_neighbour_send(x_RP, message_bytes)
        received = self._exchange(x_RP)
        return torch.addmm(self._diag_R1.to(x_RP.dtype) * x_RP, self._off.to(x_RP.dtype), received)

    def gather(self, x_RP: Tensor, include_self: bool = True, message_bytes=None) -> tuple[Tensor, Tensor]:
        self._count_neighbour_send(x_RP, message_bytes)
        received = self._exchange(x_RP)
        if received.shape[0] == 0:  # no neighbours anywhere: only padding
            received = torch.zeros(1, x_RP.shape[1], dtype=x_RP.dtype)
        rows, valid = received[self._nbr_RK], self._valid_RK
        if include_self:
            rows = torch.cat([x_RP[:, None, :], rows], 1)
            valid = torch.cat([torch.ones(self.num_nodes, 1, dtype=torch.bool), valid], 1)
        return rows, valid

    def gather_rows(self, x_RP: Tensor) -> tuple[Tensor, Tensor]:
        """Every member's rows in global order, and their node ids (padded all-gather: equal shapes)."""
        blocks = [self.blocks[m] for m in self.group.members]
        width = max(len(b) for b in blocks)
        padded = torch.zeros(width, *x_RP.shape[1:], dtype=x_RP.dtype)
        padded[:len(x_RP)] = x_RP
        parts = self.group.all_gather(padded)
        return torch.cat([p[:len(b)] for p, b in zip(parts, blocks)]), torch.cat(blocks)

    def all_gather(self, x_RP: Tensor, message_bytes=None) -> tuple[Tensor, Tensor]:
        self.collective_calls += 1
        sizes = torch.as_tensor(self.message_bytes(x_RP) if message_bytes is None else message_bytes,
                                dtype=torch.float64).expand(self.num_nodes)
        total = self.group.all_reduce(torch.stack([sizes.sum(), torch.tensor(float(self.num_nodes),
                                                                             dtype=torch.float64)]))
        self.bytes_sent_N += (self.num_alive - 1) * float(total[0] / total[1])
        return self.gather_rows(x_RP)

    def all_reduce_mean(self, x_RP: Tensor, weights_N: Tensor | None = None, message_bytes=None) -> Tensor:
        """The mean of every live node's row (weights: this rank's nodes' weights), as ``x_P``, the same on all ranks."""
        if message_bytes is not None:
            sent, _ = self.all_gather(x_RP, message_bytes)
            return mean(sent, weights_K=None if weights_N is None else self.gather_rows(weights_N[:, None])[0][:, 0])
        self.collective_calls += 1
        n = self.num_alive
        self.bytes_sent_N += 2.0 * (n - 1) / n * self.message_bytes(x_RP)
        if weights_N is None:  # the rows' own dtype on the wire: the count of live nodes is known
            return self.group.all_reduce(x_RP.sum(0)).div_(n)
        w = weights_N.double()
        total = self.group.all_reduce(torch.cat([(w[:, None] * x_RP.double()).sum(0), w.sum()[None]]))
        return (total[:-1] / total[-1]).to(x_RP.dtype)

    def server_average(self, *args, **kwargs):
        raise NotImplementedError("server-based algorithms are not run by the distributed engine")

    multicast_mean = server_average


@dataclass
class _Snapshot:
    """What a rank rolls back to after a failure: its state at the end of a completed round."""

    params_RP: Tensor
    state: object
    sampler: dict
    bytes_N: Tensor
    clock: dict | None
    losses: list
    extra: dict


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
    rows = comm.rows
    batches = RowBatches(built.batches, rows)
    lead = membership.rank == 0
    evaluate = Evaluator(built.flat, built.dataset.x_test, built.dataset.y_test, built.dataset.x_train,
                         built.dataset.y_train, built.local_test_parts, built.honest_N) if lead else None
    clock = built.clock() if lead and built.clock is not None else None
    known_NP = built.params_NP.clone() if lead else None  # the models rank 0 last saw (departed nodes keep theirs)
    params_RP = built.params_NP[rows].clone()
    state = built.algorithm.init(params_RP)
    bytes_N = torch.zeros(n, dtype=torch.float64)  # every node's bytes, from the per-round reduction
    result: list[dict] = []
    losses: list[float] = []
    extra: dict[str, list[float]] = {}  # the steps' other metrics since the last row (rank 0)
    departure_N = np.full(n, num_rounds + 1)  # the first round each node is gone
    network = _Network(built, departure_N)
    snapshots: dict[int, _Snapshot] = {}
    start = time.perf_counter()

    def capture(round_: int) -> None:
        snapshots[round_] = _Snapshot(params_RP.clone(), tree_map(_clone, state), built.batches.state_dict(),
                                      bytes_N.clone(), None if clock is None else clock.state_dict(), list(losses),
                                      {k: list(v) for k, v in extra.items()})
        snapshots.pop(round_ - 2, None)  # ranks are at most one round apart: two snapshots suffice

    def record(round_: int) -> None:
        everyone, ids = comm.gather_rows(params_RP)
        if not lead or (result and result[-1]["round"] >= round_):
            return
        known_NP[ids] = everyone
        row = evaluation_row(round_, evaluate, known_NP, comm.alive_N, losses, built.honest_N, float(bytes_N.sum()),
                             n, time.perf_counter() - start, clock.metrics() if clock is not None else {}, False)
        row.update(step_means(extra))
        losses.clear()
        extra.clear()
        result.append(row)
        if on_eval is not None:
            on_eval(row)

    die_at = _planned_death(membership.rank)
    completed, round_ = 0, 0
    capture(0)
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
                loss = means[0]
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training diverged at round {round_} (loss {loss}); lower algorithm.lr")
                bytes_N += delta[n:2 * n]
                if lead:
                    losses.append(loss)
                    for key, value in zip(keys[1:], means[1:]):
                        extra.setdefault(key, []).append(value)
                    if clock is not None:
                        clock.advance(delta[:n].numpy(), delta[n:2 * n].numpy(), comm.W, comm.collective_calls > calls0,
                                      0.0, None if comm.alive_N is None else comm.alive_N.numpy())
                completed = round_
                capture(round_)
                if is_evaluation_round(cfg, round_):
                    record(round_)
                if lead and on_round is not None:
                    on_round(round_, result[-1])
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
                    losses[:] = snap.losses
                    extra.clear()
                    extra.update({k: list(v) for k, v in snap.extra.items()})
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
    return result


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
    for field, on in (("threat.attack", cfg.threat.attack is not None), ("faults", cfg.faults.active),
                      ("privacy.clip", cfg.privacy.active),
                      ("algorithm.server_period", a.uses_server),
                      ("algorithm.final_merge", a.final_merge_enabled)):
        if on:
            raise ConfigError(f"config error: {field}: not available with --engine distributed yet (use the simulator)")
    if world > cfg.num_nodes:
        raise ConfigError(f"config error: num_nodes: {world} ranks need at least {world} nodes, got {cfg.num_nodes}")


def join_from_env(timeout_s: float = 60.0) -> Membership:
    """Join the launch that ``torchrun`` (or ``peerlearn run --nproc``) describes in the environment."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or "MASTER_PORT" not in os.environ:
        raise ConfigError("config error: --engine distributed: launch with --nproc N (one machine) or torchrun, e.g. "
                          "torchrun --standalone --nproc-per-node 4 -m peerlearn run CONFIG --engine distributed")
    store = connect_store(timeout_s)
    return Membership(store, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), timeout_s)
