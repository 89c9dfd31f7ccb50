"""DistComm: the simulator's communication primitives with real messages over a process group, on
blocks of nodes per rank (see :mod:`peerlearn.engines.distributed` for the engine around it).

Gossip (``mix``, ``push``, ``gather``) exchanges exactly the rows a rank's nodes need with point-to-point
sends and receives between the ranks that host linked nodes, then applies the same arithmetic as
:class:`~peerlearn.engines.comm.SimComm`, so a run matches the simulator to float rounding; collectives
use the process group's. Bytes are counted per node exactly as in the simulator.

References:
    Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from peerlearn.aggregators.mean import mean
from peerlearn.device import from_host, numpy
from peerlearn.engines.comm import SimComm, padded_neighbours, poison, torch_csr
from peerlearn.engines.membership import Group
from peerlearn.topology.clique import as_csr
from peerlearn.types import Tensor

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
        self.threat = None
        self.num_global = sum(len(b) for b in blocks)
        self.rows = blocks[group.launch_rank]
        self.node_ids = self.rows  # the global ids of the rows an algorithm holds here
        self.num_nodes = len(self.rows)
        self.bytes_sent_N = torch.zeros(self.num_nodes, dtype=torch.float64)
        self.bytes_sent_server = 0.0
        self.collective_calls = 0
        self.latency_hops = 0  # messages in sequence on the rings' critical paths so far (as SimComm counts them)
        self.set_group(group)

    def set_group(self, group: Group) -> None:
        """Use ``group`` (after a re-formation): the nodes of launch ranks outside it are gone."""
        self.group = group
        self.host_N = torch.full((self.num_global,), -1, dtype=torch.int64)  # member hosting each node
        for q, launch_rank in enumerate(group.members):
            self.host_N[self.blocks[launch_rank]] = q
        self.hosted_N = self.host_N >= 0
        self.num_hosted = int(self.hosted_N.sum())  # the nodes the members step (their metrics' count)
        self.set_alive(None)
        self.W = self._planned = None  # re-plan the exchanges at the next set_topology

    def set_alive(self, alive_N: Tensor | None) -> None:
        """The nodes that are up this round (global mask; None: all), within the members' nodes: the
        simulator's :meth:`~peerlearn.engines.comm.SimComm.set_alive`. Down nodes send nothing."""
        alive = self.hosted_N if alive_N is None else alive_N & self.hosted_N
        self.alive_N = None if bool(alive.all()) else alive
        self.num_alive = int(alive.sum())
        self._up_R = alive[self.rows]  # this rank's nodes that are up

    # -- topology ---------------------------------------------------------------------------
    def set_topology(self, W: sp.csr_array) -> None:
        """Use the global mixing matrix ``W`` (the same on every rank) and plan the round's exchanges."""
        if W is self.W or W is self._planned:
            return
        self._planned = W  # a clique is materialised once per new W, not every round
        W = as_csr(W)
        off = sp.csr_array(W - sp.diags_array(W.diagonal(), format="csr"))
        off.eliminate_zeros()
        self.W = W
        lo, hi = int(self.rows[0]), int(self.rows[-1]) + 1
        mine = off[lo:hi]
        need = np.unique(mine.indices)  # global ids whose rows this rank's nodes receive, sorted
        owner = numpy(self.host_N)
        if (owner[need] < 0).any():
            raise ValueError("DistComm: the topology links nodes whose rank has left the run")
        position = np.full(self.num_global, -1, dtype=np.int64)
        position[need] = np.arange(len(need))
        local = sp.csr_array((mine.data, position[mine.indices], mine.indptr), shape=(hi - lo, len(need)))
        self._off = torch_csr(local)
        rowsum_R = np.asarray(mine.sum(axis=1)).ravel()
        self._rowsum_R1 = from_host(rowsum_R.astype(np.float32).reshape(-1, 1))
        # SimComm's one-pass mix, A - diag(A 1) over the rows received and our own, in global-id order (the
        # same sums in the same order as the simulator: bit for bit)
        union = np.union1d(need, np.arange(lo, hi))
        at = np.full(self.num_global, -1, dtype=np.int64)
        at[union] = np.arange(len(union))
        lap = sp.csr_array(mine - sp.csr_array((rowsum_R, (np.arange(hi - lo), np.arange(lo, hi))), shape=mine.shape))
        self._lap = torch_csr(sp.csr_array((lap.data, at[lap.indices], lap.indptr), shape=(hi - lo, len(union))))
        self._union = (len(union), from_host(at[need]), from_host(at[lo:hi]))
        self._diag_R1 = from_host(np.asarray(W.diagonal()[lo:hi], dtype=np.float32).reshape(-1, 1))
        self._num_need, self._need = len(need), from_host(need)
        me = self.group.rank
        self._recv = {}  # member -> positions (in need) of the rows it sends us, in global-id order
        self._own = (from_host(np.flatnonzero(owner[need] == me)),
                     from_host(need[owner[need] == me] - lo))
        for q in range(self.group.size):
            if q != me and (pos := np.flatnonzero(owner[need] == q)).size:
                self._recv[q] = from_host(pos)
        self._send = {}  # member -> local indices of our rows its nodes need, in global-id order
        cols = off.tocsc()
        for q, launch_rank in enumerate(self.group.members):
            if q == me:
                continue
            block = self.blocks[launch_rank]
            theirs = cols[int(block[0]):int(block[-1]) + 1, lo:hi]
            senders = np.flatnonzero(np.diff(theirs.tocsc().indptr))
            if senders.size:
                self._send[q] = from_host(senders)
        self._out_degree_R = from_host(np.bincount(off.indices, minlength=self.num_global)[lo:hi]).double()
        # padded neighbour table for gather(), as the simulator's: width = the largest degree anywhere
        degree = np.diff(off.indptr)
        k = int(degree.max()) if self.num_global else 0
        self._nbr_RK, self._valid_RK = padded_neighbours(local.indptr, local.indices, k, np.zeros(hi - lo))

    # -- attacks at the message boundary ------------------------------------------------------------
    def set_threat(self, threat) -> None:
        """The simulator's :class:`~peerlearn.engines.comm.Threat`, applied to the messages as the simulator
        does: the adversary sees every honest message it may see (``view_BN``), so each gossip step first
        gathers every rank's rows (the adversary's omniscience: simulation machinery, not counted as bytes),
        and every rank computes the same attack with the same generator; each rank then takes the messages
        its nodes receive. After a rank has left, its nodes' messages are zeros to the adversary (they are
        linked to nobody)."""
        self.threat = threat if threat is not None and len(threat.byzantine_idx) else None

    def _poisoned(self, x_RP: Tensor) -> Tensor | None:
        """With a model attack, the messages this rank's nodes receive (in global-id order), else None."""
        if self.threat is None:
            return None
        rows, ids = self.gather_rows(x_RP)
        full = rows.new_zeros(self.num_global, *rows.shape[1:])
        full[ids] = rows
        return poison(self.threat, full)[self._need]

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
        poisoned = self._poisoned(x_RP)
        if poisoned is not None:  # x + A m - diag(A 1) x, as the simulator with an attack
            out = torch.addmm(x_RP, self._off.to(x_RP.dtype), poisoned)
            return out.addcmul_(self._rowsum_R1.to(x_RP.dtype), x_RP, value=-1.0)
        received = self._exchange(x_RP)
        size, from_need, from_own = self._union
        rows = x_RP.new_empty(size, x_RP.shape[1])
        rows[from_need], rows[from_own] = received, x_RP
        return torch.addmm(x_RP, self._lap.to(x_RP.dtype), rows)

    def _received(self, x_RP: Tensor) -> Tensor:
        """The messages this rank's nodes receive: poisoned under a model attack, else exchanged."""
        poisoned = self._poisoned(x_RP)
        return self._exchange(x_RP) if poisoned is None else poisoned

    def push(self, x_RP: Tensor, message_bytes=None) -> Tensor:
        self._count_neighbour_send(x_RP, message_bytes)
        received = self._received(x_RP)
        return torch.addmm(self._diag_R1.to(x_RP.dtype) * x_RP, self._off.to(x_RP.dtype), received)

    def gather(self, x_RP: Tensor, include_self: bool = True, message_bytes=None) -> tuple[Tensor, Tensor]:
        self._count_neighbour_send(x_RP, message_bytes)
        received = self._received(x_RP)
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

    def _alive_rows(self, x_RP: Tensor) -> tuple[Tensor, Tensor]:
        """Every member's rows of the nodes that are up, in global order, and their node ids."""
        rows, ids = self.gather_rows(x_RP)
        if self.alive_N is None:
            return rows, ids
        up = self.alive_N[ids]
        return rows[up], ids[up]

    def all_gather(self, x_RP: Tensor, message_bytes=None) -> tuple[Tensor, Tensor]:
        self.collective_calls += 1
        self.latency_hops += max(self.num_alive - 1, 0)
        sizes = torch.as_tensor(self.message_bytes(x_RP) if message_bytes is None else message_bytes,
                                dtype=torch.float64).expand(self.num_nodes)[self._up_R]
        total = self.group.all_reduce(torch.stack([sizes.sum(), torch.tensor(float(len(sizes)), dtype=torch.float64)]))
        if float(total[1]):
            self.bytes_sent_N[self._up_R] += (self.num_alive - 1) * float(total[0] / total[1])
        return self._alive_rows(x_RP)

    def all_reduce_mean(self, x_RP: Tensor, weights_N: Tensor | None = None, message_bytes=None) -> Tensor:
        """The mean of every live node's row (weights: this rank's nodes' weights), as ``x_P``, the same on all ranks."""
        if message_bytes is not None:
            sent, _ = self.all_gather(x_RP, message_bytes)
            return mean(sent, weights_K=None if weights_N is None else self._alive_rows(weights_N[:, None])[0][:, 0])
        self.collective_calls += 1
        n, up = self.num_alive, self._up_R
        self.latency_hops += 2 * max(n - 1, 0)
        self.bytes_sent_N[up] += 2.0 * (n - 1) / max(n, 1) * self.message_bytes(x_RP)
        if weights_N is None:  # the rows' own dtype on the wire: the count of live nodes is known
            return self.group.all_reduce((x_RP if self.alive_N is None else x_RP[up]).sum(0)).div_(n)
        w = weights_N.double() * up
        total = self.group.all_reduce(torch.cat([(w[:, None] * x_RP.double()).sum(0), w.sum()[None]]))
        return (total[:-1] / total[-1]).to(x_RP.dtype)

    # -- the rows held here ----------------------------------------------------------------------
    def mine(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Of the global node ids ``ids``, this rank's: (their positions in its rows, their ids)."""
        lo = int(self.rows[0])
        ids = ids[(ids >= lo) & (ids < lo + self.num_nodes)]
        return ids - lo, ids

    def own(self, x_N: Tensor) -> Tensor:
        return x_N[self.rows]

    def node_mean(self, values_K: Tensor) -> float:
        """The mean of a per-node metric over every rank's ``values_K`` (a rank may hold none)."""
        total = self.group.all_reduce(torch.stack([values_K.double().sum(), torch.tensor(float(len(values_K)),
                                                                                          dtype=torch.float64)]))
        return float(total[0] / total[1]) if float(total[1]) else float("nan")

    def rows_mean(self, x_KP: Tensor) -> Tensor:
        return self._global_mean(x_KP, None, x_KP.dtype)

    def _up(self, ids: Tensor) -> Tensor:
        return torch.ones(len(ids), dtype=torch.bool) if self.alive_N is None else self.alive_N[ids]

    def _global_mean(self, x_KP: Tensor, weights_K: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        """The (weighted) mean of every rank's rows ``x_KP`` (a rank may give none), or None when none gave any."""
        w = torch.ones(len(x_KP), dtype=torch.float64) if weights_K is None else weights_K.double()
        total = self.group.all_reduce(torch.cat([(w[:, None] * x_KP.double()).sum(0), w.sum()[None],
                                                 torch.tensor([float(len(x_KP))], dtype=torch.float64)]))
        if not float(total[-1]):
            return None
        return (total[:-2] / total[-2]).to(dtype)

    def server_average(self, x_KP: Tensor, rows: Tensor, weights_R: Tensor | None = None,
                       broadcast_to: Tensor | None = None) -> Tensor | None:
        """The simulator's server average with this rank's senders ``rows`` (global ids, from :meth:`mine`) and
        their rows; ``broadcast_to`` as in the simulator (global ids; default the senders). The server is
        the group's all-reduce; its bytes are counted by the rank hosting each receiver."""
        self.collective_calls += 1
        up = self._up(rows)
        x_KP, rows = x_KP[up], rows[up]
        weights_R = None if weights_R is None else weights_R[up]
        receivers = rows if broadcast_to is None else self.mine(broadcast_to)[1]
        size = self.message_bytes(x_KP)
        self.bytes_sent_N.index_add_(0, self.mine(rows)[0], torch.full((len(rows),), float(size), dtype=torch.float64))
        average = self._global_mean(x_KP, weights_R, x_KP.dtype)
        if average is not None:  # None: every sender was down, the server had nothing to send
            self.bytes_sent_server += float(size * int(self._up(receivers).sum()))
        return average

    def multicast_mean(self, x_KP: Tensor, senders: Tensor, receivers: Tensor) -> Tensor | None:
        """The simulator's multicast with this rank's ``senders`` (global ids) and their rows; ``receivers``
        global ids (every rank passes them all)."""
        self.collective_calls += 1
        up = self._up(senders)
        x_KP, senders = x_KP[up], senders[up]
        receivers = receivers[self._up(receivers)]
        others = len(receivers) - torch.isin(senders, receivers).to(torch.float64)
        self.bytes_sent_N.index_add_(0, self.mine(senders)[0], others * self.message_bytes(x_KP))
        return self._global_mean(x_KP, None, x_KP.dtype)
