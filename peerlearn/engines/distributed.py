"""The distributed engine: the simulator's algorithms on real processes, over ``torch.distributed``.

Each rank hosts a contiguous block of nodes (``node_blocks``) and runs the *same* algorithm code on
its block's rows; only the ``Comm`` differs. :class:`DistComm` implements the simulator's primitives
with real messages: gossip (``mix``, ``push``, ``gather``) exchanges exactly the rows a rank's nodes
need with point-to-point ops (``batch_isend_irecv``) between the ranks that host linked nodes, and
then applies the same arithmetic as :class:`~peerlearn.engines.comm.SimComm` (the difference form
``x + A m - diag(A 1) x``, the same column order), so a run matches the simulator to float rounding;
collectives (``all_reduce_mean``, ``all_gather``) use the process group's. Bytes are counted per
node exactly as in the simulator (a message to a neighbour on the same rank counts as sent).

Every rank draws the simulator's mini-batches for its rows (the sampler draws for all nodes and
keeps some, so the stream does not depend on the split). Rank 0 gathers the models at evaluation
rows only, evaluates them with the simulator's code, keeps the simulated clock, and writes the run.

References:
    Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist

from peerlearn.aggregators.mean import mean
from peerlearn.engines.comm import SimComm, padded_neighbours, torch_csr
from peerlearn.engines.simulator import Evaluator, evaluation_row
from peerlearn.types import Tensor

# algorithms whose step only touches its own rows and the Comm (run unchanged on a block of nodes)
DISTRIBUTED_ALGORITHMS = ("dsgd", "gradient_tracking", "push_sum", "diloco", "local_sgd", "local", "choco")


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

    Attributes:
        rows: global ids of the rank's nodes; ``num_nodes`` is their count (what algorithms see).
        bytes_sent_N: cumulative bytes sent by each of the rank's nodes (float64).
    """

    def __init__(self, rows: Tensor, num_global: int, group=None):
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.blocks = node_blocks(num_global, self.world)
        if not torch.equal(self.blocks[self.rank], rows):
            raise ValueError("DistComm: rows must be this rank's block from node_blocks()")
        self.rows, self.num_global, self.num_nodes = rows, num_global, len(rows)
        self.owner_N = torch.cat([torch.full((len(b),), q, dtype=torch.int64) for q, b in enumerate(self.blocks)])
        self.bytes_sent_N = torch.zeros(self.num_nodes, dtype=torch.float64)
        self.bytes_sent_server = 0.0
        self.collective_calls = 0
        self.alive_N = None
        self.W = None

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
        position = np.full(self.num_global, -1, dtype=np.int64)
        position[need] = np.arange(len(need))
        local = sp.csr_array((mine.data, position[mine.indices], mine.indptr), shape=(hi - lo, len(need)))
        self._off = torch_csr(local)
        self._rowsum_R1 = torch.from_numpy(np.asarray(mine.sum(axis=1), dtype=np.float32).reshape(-1, 1))
        self._diag_R1 = torch.from_numpy(np.asarray(W.diagonal()[lo:hi], dtype=np.float32).reshape(-1, 1))
        self._num_need = len(need)
        owner = self.owner_N.numpy()
        self._recv = {}  # peer -> positions (in need) of the rows it sends us, in global-id order
        self._own = (torch.from_numpy(np.flatnonzero(owner[need] == self.rank)),
                     torch.from_numpy(need[owner[need] == self.rank] - lo))
        for q in range(self.world):
            if q != self.rank and (pos := np.flatnonzero(owner[need] == q)).size:
                self._recv[q] = torch.from_numpy(pos)
        self._send = {}  # peer -> local indices of our rows its nodes need, in global-id order
        cols = off.tocsc()
        for q, block in enumerate(self.blocks):
            if q == self.rank:
                continue
            q_lo, q_hi = int(block[0]), int(block[-1]) + 1
            theirs = cols[q_lo:q_hi, lo:hi]
            senders = np.flatnonzero(np.diff(theirs.tocsc().indptr))
            if senders.size:
                self._send[q] = torch.from_numpy(senders)
        self._out_degree_R = torch.from_numpy(np.bincount(off.indices, minlength=self.num_global)[lo:hi]).double()
        # padded neighbour table for gather(), as the simulator's: width = the largest degree anywhere
        degree = np.diff(off.indptr)
        k = int(degree.max()) if self.num_global else 0
        self._nbr_RK, self._valid_RK = padded_neighbours(local.indptr, local.indices, k, np.zeros(hi - lo))

    def set_alive(self, alive_N: Tensor | None) -> None:
        if alive_N is not None and not bool(alive_N.all()):
            raise NotImplementedError("the distributed engine does not simulate faults (real ones: issue 6)")

    # -- exchange ---------------------------------------------------------------------------------
    def _exchange(self, x_RP: Tensor) -> Tensor:
        """The rows this rank's nodes receive (one per needed sender, in global-id order)."""
        out = torch.empty(self._num_need, x_RP.shape[1], dtype=x_RP.dtype)
        pos, idx = self._own
        out[pos] = x_RP[idx]
        ops, inbox = [], {}
        for q, send_idx in self._send.items():
            ops.append(dist.P2POp(dist.isend, x_RP[send_idx].contiguous(), q, self.group))
        for q, recv_pos in self._recv.items():
            inbox[q] = torch.empty(len(recv_pos), x_RP.shape[1], dtype=x_RP.dtype)
            ops.append(dist.P2POp(dist.irecv, inbox[q], q, self.group))
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()
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

    def gather_rows(self, x_RP: Tensor) -> Tensor:
        """Every rank's rows, in global order (padded all-gather: gloo needs equal shapes)."""
        width = max(len(b) for b in self.blocks)
        padded = torch.zeros(width, *x_RP.shape[1:], dtype=x_RP.dtype)
        padded[:len(x_RP)] = x_RP
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:len(b)] for p, b in zip(parts, self.blocks)])

    def all_gather(self, x_RP: Tensor, message_bytes=None) -> tuple[Tensor, Tensor]:
        self.collective_calls += 1
        sizes = torch.as_tensor(self.message_bytes(x_RP) if message_bytes is None else message_bytes,
                                dtype=torch.float64).expand(self.num_nodes)
        total = torch.stack([sizes.sum(), torch.tensor(float(self.num_nodes), dtype=torch.float64)])
        dist.all_reduce(total, group=self.group)
        self.bytes_sent_N += (self.num_global - 1) * float(total[0] / total[1])
        return self.gather_rows(x_RP), torch.arange(self.num_global)

    def all_reduce_mean(self, x_RP: Tensor, weights_N: Tensor | None = None, message_bytes=None) -> Tensor:
        """The mean of every node's row (weights: this rank's nodes' weights), as ``x_P``, the same on all ranks."""
        if message_bytes is not None:
            sent, _ = self.all_gather(x_RP, message_bytes)
            return mean(sent, weights_K=None if weights_N is None else self.gather_rows(weights_N[:, None])[:, 0])
        self.collective_calls += 1
        n = self.num_global
        self.bytes_sent_N += 2.0 * (n - 1) / n * self.message_bytes(x_RP)
        w = torch.ones(self.num_nodes, dtype=torch.float64) if weights_N is None else weights_N.double()
        total = torch.cat([(w[:, None] * x_RP.double()).sum(0), w.sum()[None]])
        dist.all_reduce(total, group=self.group)
        return (total[:-1] / total[-1]).to(x_RP.dtype)

    def server_average(self, *args, **kwargs):
        raise NotImplementedError("server-based algorithms are not run by the distributed engine")

    multicast_mean = server_average


def _reduce(t: Tensor, group=None) -> Tensor:
    dist.all_reduce(t, group=group)
    return t


def simulate_distributed(built, on_eval: Callable[[dict], None] | None = None,
                         on_round: Callable[[int, dict], None] | None = None,
                         on_finish: Callable[[Tensor], None] | None = None, group=None) -> list[dict]:
    """Run ``built`` with this process as one rank of the (initialised) default process group.

    Every rank returns the evaluated rows (rank 0 computes them and broadcasts nothing else: other
    ranks get an empty list); callbacks are called on rank 0 only. ``on_finish`` gets all ``params_NP``.
    """
    cfg = built.config
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    n = cfg.num_nodes
    if world > n:
        raise ValueError(f"{world} ranks for {n} nodes: every rank needs at least one node")
    rows = node_blocks(n, world)[rank]
    comm = DistComm(rows, n, group)
    comm.set_topology(built.W)
    batches = RowBatches(built.batches, rows)
    lead = rank == 0
    evaluate = Evaluator(built.flat, built.dataset.x_test, built.dataset.y_test, built.dataset.x_train,
                         built.dataset.y_train, built.local_test_parts, built.honest_N) if lead else None
    clock = built.clock() if lead and built.clock is not None else None
    params_RP = built.params_NP[rows].clone()
    state = built.algorithm.init(params_RP)
    result: list[dict] = []
    losses: list[float] = []
    start = time.perf_counter()

    def record(round_: int) -> None:
        everyone = comm.gather_rows(params_RP)
        total = float(_reduce(comm.bytes_sent_N.sum().reshape(1), group)[0])
        if not lead:
            return
        row = evaluation_row(round_, evaluate, everyone, None, losses, built.honest_N, total, n,
                             time.perf_counter() - start, clock.metrics() if clock is not None else {}, False)
        losses.clear()
        result.append(row)
        if on_eval is not None:
            on_eval(row)

    record(0)
    for round_ in range(1, cfg.num_rounds + 1):
        if built.schedule is not None:
            comm.set_topology(built.schedule(round_))
        drawn0, bytes0, calls0 = built.batches.drawn_N.clone(), comm.bytes_sent_N.clone(), comm.collective_calls
        params_RP, state, metrics = built.algorithm.step(state, params_RP, batches, built.grad_fn, comm)
        # one reduction per round: the global loss, and what the clock needs (per-node compute and bytes)
        delta = torch.zeros(2 * n + 1, dtype=torch.float64)
        delta[:n] = (built.batches.drawn_N - drawn0).double()  # only this rank's rows are non-zero
        delta[n + rows] = comm.bytes_sent_N - bytes0
        delta[-1] = metrics["loss"] * len(rows)
        _reduce(delta, group)
        loss = float(delta[-1]) / n
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged at round {round_} (loss {loss}); lower algorithm.lr")
        if lead:
            losses.append(loss)
            if clock is not None:
                clock.advance(delta[:n].numpy(), delta[n:2 * n].numpy(), comm.W, comm.collective_calls > calls0,
                              0.0, None)
        if round_ % cfg.eval_every == 0 or round_ == cfg.num_rounds:
            record(round_)
        if lead and on_round is not None:
            on_round(round_, result[-1])
    everyone = comm.gather_rows(params_RP)
    if lead and on_finish is not None:
        on_finish(everyone)
    return result


def check_config(cfg, world: int) -> None:
    """What the distributed engine runs; a ConfigError naming the field otherwise (before any training)."""
    from peerlearn.config import ConfigError

    a = cfg.algorithm
    if a.name not in DISTRIBUTED_ALGORITHMS:
        raise ConfigError(f"config error: algorithm.name: the distributed engine runs {', '.join(DISTRIBUTED_ALGORITHMS)}; "
                          f"got {a.name} (use the simulator)")
    for field, on in (("threat.attack", cfg.threat.attack is not None), ("faults", cfg.faults.active),
                      ("privacy.clip", cfg.privacy.active), ("algorithm.server_period", bool(a.server_period)),
                      ("algorithm.final_merge", a.final_merge)):
        if on:
            raise ConfigError(f"config error: {field}: not available with --engine distributed yet (use the simulator)")
    if world > cfg.num_nodes:
        raise ConfigError(f"config error: num_nodes: {world} ranks need at least {world} nodes, got {cfg.num_nodes}")


def init_from_env(timeout_s: float = 120.0) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment (gloo); returns (rank, world)."""
    import datetime
    import os

    from peerlearn.config import ConfigError

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError("config error: --engine distributed: launch with torchrun, e.g. "
                          "torchrun --standalone --nproc-per-node 4 -m peerlearn run CONFIG --engine distributed")
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()
