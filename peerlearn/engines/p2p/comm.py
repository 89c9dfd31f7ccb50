"""P2PComm: the simulator's gossip primitives between peers over libp2p, with a deadline per exchange.

A peer holds a block of nodes (its rows). In each exchange (``mix`` or ``gather``, numbered within the
round) it sends each other peer the rows of its nodes that peer's nodes listen to, in one message, and
waits for the rows its own nodes listen to until every expected peer has sent or the deadline passes. A
row that did not come is a **dropped message**: ``mix`` computes ``x_i + sum_{j received} W_ij (x_j - x_i)``
(the missing neighbour counts as agreeing with ``x_i``), ``gather`` marks it invalid for the aggregator.
With every message on time this is the simulator's arithmetic, so a swarm reproduces a simulation of the
same config to float rounding. A peer that misses ``patience`` exchanges in a row is presumed gone and not
waited for (its messages are still used if they come again); a peer that leaves the roster is not sent to.

Bytes are counted per node as the simulator counts them (a message of P float32 values per out-neighbour,
a neighbour on the same peer included), and on the wire: payload and protocol overhead separately
(:class:`~peerlearn.engines.p2p.swarm.Swarm`).

References:
    Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms? A Case Study for
    Decentralized Parallel Stochastic Gradient Descent", NeurIPS 2017 (the gossip step).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch

from peerlearn.attacks.model_poisoning import HonestView
from peerlearn.engines.comm import SimComm, padded_neighbours, torch_csr
from peerlearn.topology.clique import as_csr
from peerlearn.types import Tensor


class P2PComm:
    """The :class:`~peerlearn.types.Comm` of one peer (see the module doc).

    Args:
        swarm: this peer's :class:`~peerlearn.engines.p2p.swarm.Swarm`.
        rows: the global ids of this peer's nodes (a contiguous block).
        num_global: the number of nodes in the run.
        W: the run's mixing matrix (the same at every peer).
        roster: peer id -> ``{"nodes": [first, end)}`` of every admitted peer.
        deadline_s: how long an exchange waits for the expected messages.
        patience: missed exchanges in a row after which a peer is presumed gone.
    """

    message_bytes = staticmethod(SimComm.message_bytes)

    def __init__(self, swarm, rows: Tensor, num_global: int, W, roster: dict[str, dict], deadline_s: float,
                 patience: int = 3):
        self.swarm, self.rows, self.num_global = swarm, rows, num_global
        self.node_ids, self.num_nodes = rows, len(rows)
        self.lo, self.hi = int(rows[0]), int(rows[-1]) + 1
        self.deadline_s, self.patience = deadline_s, patience
        self.bytes_sent_N = torch.zeros(self.num_nodes, dtype=torch.float64)
        self.bytes_sent_server, self.collective_calls = 0.0, 0
        self.alive_N = None
        self.set_threat(None)
        self.round, self.call = 0, 0
        self.dropped = 0  # expected rows that had not come by the deadline
        self.misses: dict[str, int] = {}
        self.W = None
        self.set_roster(roster)
        self.set_topology(W)

    # -- who is where ------------------------------------------------------------------------------
    def set_roster(self, roster: dict[str, dict]) -> None:
        """The live peers and their nodes; nodes of no live peer neither send nor are sent to."""
        self.roster = dict(roster)
        self.host = np.full(self.num_global, -1, dtype=np.int64)  # node -> index into self.peers
        self.peers = sorted(roster)
        for q, peer in enumerate(self.peers):
            first, end = roster[peer]["nodes"]
            self.host[first:end] = q
        if self.W is not None:
            self._plan()

    def set_topology(self, W) -> None:
        """The round's mixing matrix (the same at every peer: a schedule is a pure function of the round)."""
        if W is self.W:
            return
        W = as_csr(W)
        off = sp.csr_array(W - sp.diags_array(W.diagonal(), format="csr"))
        off.eliminate_zeros()
        self.W, self._offT = W, off
        self._mine = off[self.lo:self.hi]  # my nodes' in-weights (rows) over every sender (columns)
        self._out_degree_R = torch.from_numpy(np.bincount(off.indices, minlength=self.num_global)[self.lo:self.hi]).double()
        self._plan()

    def _plan(self) -> None:
        """What to wait for and what to send, from the topology and the roster."""
        mine, me = self._mine, self.swarm.peer_id
        self._need = np.unique(mine.indices)  # senders my nodes listen to, sorted
        position = np.full(self.num_global, -1, dtype=np.int64)
        position[self._need] = np.arange(len(self._need))
        self._local = sp.csr_array((mine.data, position[mine.indices], mine.indptr),
                                   shape=(self.hi - self.lo, len(self._need)))
        owners = self.host[self._need]
        self._expect = {self.peers[q] for q in np.unique(owners[owners >= 0])} - {me}
        cols = self._offT.tocsc()
        self._send = {}  # peer -> my local row indices its nodes listen to
        for q, peer in enumerate(self.peers):
            if peer == me:
                continue
            first, end = self.roster[peer]["nodes"]
            theirs = cols[first:end, self.lo:self.hi]
            listened = np.flatnonzero(np.diff(theirs.tocsc().indptr))
            if listened.size:
                self._send[peer] = listened
        k = int(np.diff(self._offT.indptr).max()) if self.num_global else 0
        self._nbr_RK, self._valid_RK = padded_neighbours(self._local.indptr, self._local.indices, k,
                                                         np.zeros(self.hi - self.lo))

    def start_round(self, round_: int) -> None:
        self.round, self.call = round_, 0

    # -- an exchange -------------------------------------------------------------------------------
    def _next_key(self) -> tuple[int, int]:
        """The next exchange of this round: ``(round, call)``, the key its messages carry."""
        key = (self.round, self.call)
        self.call += 1
        return key

    def _gone(self) -> set[str]:
        """The peers presumed gone: ``patience`` missed exchanges in a row (not waited for, not sent to)."""
        return {p for p, m in self.misses.items() if m >= self.patience}

    def _wait(self, key: tuple, expect: set[str], track: set[str]) -> tuple[dict, set[str]]:
        """The rows of exchange ``key`` once every peer of ``expect`` sent, or at the deadline, and who sent; each
        peer of ``track`` has its count of missed exchanges in a row updated."""
        received, came = self.swarm.inbox.wait(key, expect, time.monotonic() + self.deadline_s)
        for peer in track:
            self.misses[peer] = 0 if peer in came else self.misses.get(peer, 0) + 1
        return received, came

    def _poison(self, x_RP: Tensor) -> Tensor:
        """The messages of my nodes: a Byzantine node's replaced by the attack on what this peer has seen (its
        honest nodes' rows and the honest rows it received in the previous exchange: an adversary that knows
        what its peer knows, one exchange late), an honest node's its row."""
        t, bad = self.threat, self._byzantine_R
        if t is None or bad is None:
            return x_RP
        seen = x_RP[~bad] if self._seen is None else torch.cat([x_RP[~bad], self._seen.to(x_RP)])
        if len(seen) == 0:  # nothing honest seen yet: the honest row is the best guess of the mean
            seen = x_RP[bad]
        view = torch.full((int(bad.sum()), len(seen)), 1.0 / len(seen), dtype=x_RP.dtype)
        msg = t.attack(x_RP[bad], HonestView(seen, view), t.generator)
        if t.sybil:
            msg = msg[:1].expand_as(msg)
        out = x_RP.clone()
        out[bad] = msg.to(x_RP.dtype)
        return out

    def _exchange(self, x_RP: Tensor) -> tuple[Tensor, np.ndarray]:
        """``(rows, got)``: the messages my nodes listen to (in ``_need`` order) and which of them came."""
        key, gone = self._next_key(), self._gone()
        x_RP = self._poison(x_RP)
        targets = {peer: ({"round": key[0], "call": key[1], "nodes": [self.lo + int(i) for i in idx]}, x_RP[idx])
                   for peer, idx in self._send.items() if peer not in gone}
        self.swarm.send_soon(targets, self.deadline_s)
        received, _ = self._wait(key, self._expect - gone, self._expect)  # a gone peer that sends again counts
        out = x_RP.new_zeros(len(self._need), x_RP.shape[1])
        got = np.zeros(len(self._need), dtype=bool)
        own = (self._need >= self.lo) & (self._need < self.hi)
        out[torch.from_numpy(np.flatnonzero(own))] = x_RP[torch.from_numpy(self._need[own] - self.lo)]
        got[own] = True
        for pos in np.flatnonzero(~own):
            row = received.get(int(self._need[pos]))
            if row is not None and row.shape == out.shape[1:]:  # a row of another width is not this exchange's
                out[pos], got[pos] = row.to(x_RP.dtype), True
        self.dropped += int((~got).sum())
        if self._byzantine_R is not None:  # what the adversary will have seen: the honest messages that came
            came = got & ~own & ~np.isin(self._need, self._byzantine_ids)
            self._seen = out[torch.from_numpy(np.flatnonzero(came))].detach().clone()
        return out, got

    def _count(self, x_RP: Tensor, message_bytes) -> None:
        size = self.message_bytes(x_RP) if message_bytes is None else message_bytes
        self.bytes_sent_N += self._out_degree_R * size

    def mix(self, x_RP: Tensor, message_bytes=None) -> Tensor:
        """``x_i + sum_{j received} W_ij (x_j - x_i)`` for each of my nodes (see the module doc)."""
        self._count(x_RP, message_bytes)
        rows, got = self._exchange(x_RP)
        local = self._local.copy()
        local.data = local.data * got[local.indices]  # a dropped message weighs nothing
        rowsum_R1 = torch.from_numpy(np.asarray(local.sum(axis=1), dtype=np.float32).reshape(-1, 1)).to(x_RP)
        out = torch.addmm(x_RP, torch_csr(local).to(x_RP.dtype), rows)
        return out.addcmul_(rowsum_R1, x_RP, value=-1.0)

    def push(self, x_RP: Tensor, message_bytes=None) -> Tensor:
        """``W_ii x_i + sum_{j received} W_ij x_j`` (column-stochastic ``W``, push-sum): a dropped message's mass is
        lost, in the model and in the weight alike, so their ratio stays an average of what arrived."""
        self._count(x_RP, message_bytes)
        rows, got = self._exchange(x_RP)
        local = self._local.copy()
        local.data = local.data * got[local.indices]
        diag_R1 = torch.from_numpy(np.asarray(self.W.diagonal()[self.lo:self.hi], dtype=np.float32).reshape(-1, 1))
        return torch.addmm(diag_R1.to(x_RP) * x_RP, torch_csr(local).to(x_RP.dtype), rows)

    def gather(self, x_RP: Tensor, include_self: bool = True, message_bytes=None) -> tuple[Tensor, Tensor]:
        """Each node's received rows and their mask (padding and dropped messages are False)."""
        self._count(x_RP, message_bytes)
        rows, got = self._exchange(x_RP)
        if rows.shape[0] == 0:
            rows, got = x_RP.new_zeros(1, x_RP.shape[1]), np.zeros(1, dtype=bool)
        received = rows[self._nbr_RK]
        valid = self._valid_RK & torch.from_numpy(got)[self._nbr_RK]
        if include_self:
            received = torch.cat([x_RP[:, None, :], received], 1)
            valid = torch.cat([torch.ones(self.num_nodes, 1, dtype=torch.bool), valid], 1)
        return received, valid

    def multicast_mean(self, x_KP: Tensor, senders: Tensor, receivers: Tensor) -> Tensor | None:
        """MoDeST's multicast (de Vos et al. 2023) on a swarm: every peer sends the rows of its ``senders`` (global
        ids of its nodes; none: an empty message says so) to every peer hosting one of ``receivers``; a peer
        hosting receivers returns the mean of every sender row that came by the deadline (None when none came:
        its receivers keep their models), which is the simulator's mean when all came. A peer hosting no
        receiver learns nothing and returns its own senders' mean (zeros without any): the algorithm reads a
        multicast's result only for the receivers."""
        self.collective_calls += 1
        key, gone = self._next_key(), self._gone()
        me, ids, to = self.swarm.peer_id, senders.cpu().numpy(), receivers.cpu().numpy()
        others = len(to) - np.isin(ids, to)  # what the simulator counts: a message per other receiver
        self.bytes_sent_N.index_add_(0, torch.from_numpy(ids - self.lo).to(self.bytes_sent_N.device),
                                     torch.from_numpy(others * float(self.message_bytes(x_KP))).to(self.bytes_sent_N))
        hosts = {self.peers[q] for q in np.unique(self.host[to]) if q >= 0}
        header = {"round": key[0], "call": key[1], "nodes": [int(i) for i in ids]}
        self.swarm.send_soon({p: (header, x_KP) for p in hosts - {me} - gone}, self.deadline_s)
        if me not in hosts:
            return x_KP.mean(0) if len(x_KP) else x_KP.new_zeros(x_KP.shape[1])
        expect = set(self.peers) - {me} - gone
        received, _ = self._wait(key, expect, expect)
        rows = [x_KP] + [row[None].to(x_KP) for node, row in sorted(received.items())
                         if row.shape == x_KP.shape[1:] and node not in set(ids.tolist())]
        every = torch.cat(rows)
        return every.mean(0) if len(every) else None

    # -- collectives without a server: every peer sends its part to every other ---------------------------
    def _to_every_peer(self, nodes: list[int], rows: Tensor) -> dict[int, Tensor]:
        """Send ``rows`` (of ``nodes``) to every other live peer and return every row that came by the deadline,
        by node (K (K - 1) messages; a peer whose message did not come is left out and counted as dropped)."""
        key = self._next_key()
        expect = set(self.peers) - {self.swarm.peer_id} - self._gone()
        header = {"round": key[0], "call": key[1], "nodes": nodes}
        self.swarm.send_soon({p: (header, rows) for p in expect}, self.deadline_s)
        received, came = self._wait(key, expect, expect)
        self.dropped += len(expect - came)
        return {node: row for node, row in received.items() if row.shape == rows.shape[1:]}

    def _sum_over_peers(self, part: Tensor) -> Tensor | None:
        """The sum over the live peers of each one's ``part`` (a row of at most P + 1 values), by sending it to
        every other peer and adding what came by the deadline: an all-reduce without a server or a ring (a peer
        whose part did not come is left out). Computed in float64 in peer order, the same sum at every peer
        that got every part (a part travels as the part of the peer's first node)."""
        parts = {self.lo: part.double()}
        parts.update({node: row.double() for node, row in self._to_every_peer([self.lo], part[None].float()).items()})
        return torch.stack([parts[n] for n in sorted(parts)]).sum(0)

    def all_gather(self, x_RP: Tensor, message_bytes=None) -> tuple[Tensor, Tensor]:
        """Every node's row, sent by its peer to every other (:meth:`_to_every_peer`): the rows that came (this
        peer's included) and their node ids, in node order; bytes as the simulator counts a ring all-gather."""
        self.collective_calls += 1
        sizes = torch.as_tensor(self.message_bytes(x_RP) if message_bytes is None else message_bytes,
                                dtype=torch.float64).expand(self.num_nodes)
        self.bytes_sent_N += (self.num_global - 1) * float(sizes.mean())
        rows = {self.lo + i: row for i, row in enumerate(x_RP)}
        rows.update({n: r.to(x_RP) for n, r in self._to_every_peer(list(range(self.lo, self.hi)), x_RP).items()})
        ids = sorted(rows)
        return torch.stack([rows[n] for n in ids]), torch.tensor(ids)

    def all_reduce_mean(self, x_RP: Tensor, weights_N: Tensor | None = None, message_bytes=None) -> Tensor:
        """The (weighted) mean of every node's row, as ``x_P`` (see :meth:`_sum_over_peers`); bytes as the simulator
        counts an all-reduce (or an all-gather of encoded rows, ``message_bytes``)."""
        self.collective_calls += 1
        n = self.num_global
        if message_bytes is None:
            self.bytes_sent_N += 2.0 * (n - 1) / n * self.message_bytes(x_RP)
        else:
            self.bytes_sent_N += (n - 1) * float(torch.as_tensor(message_bytes, dtype=torch.float64).mean())
        w = torch.ones(self.num_nodes, dtype=torch.float64) if weights_N is None else weights_N.double().to(x_RP.device)
        total = self._sum_over_peers(torch.cat([(w[:, None] * x_RP.double()).sum(0), w.sum()[None]]))
        return (total[:-1] / total[-1]).to(x_RP.dtype)

    def _mean_of(self, x_KP: Tensor, weights_K: Tensor | None) -> tuple[Tensor | None, int]:
        """The (weighted) mean of every peer's rows ``x_KP`` (a peer may give none; None when none gave any) and
        how many rows there were."""
        w = torch.ones(len(x_KP), dtype=torch.float64) if weights_K is None else weights_K.double()
        total = self._sum_over_peers(torch.cat([(w[:, None] * x_KP.double()).sum(0), w.sum()[None],
                                                torch.tensor([float(len(x_KP))], dtype=torch.float64)]))
        count = int(round(float(total[-1])))
        return (None if count == 0 else (total[:-2] / total[-2]).to(x_KP.dtype)), count

    def server_average(self, x_KP: Tensor, rows: Tensor, weights_R: Tensor | None = None,
                       broadcast_to: Tensor | None = None) -> Tensor | None:
        """A server's average of the rows of nodes ``rows`` (global ids held here), computed by every peer instead
        (no server: :meth:`_mean_of`); bytes as the simulator counts an upload and the server's broadcast."""
        self.collective_calls += 1
        size = self.message_bytes(x_KP)
        ids = rows.cpu().numpy()
        self.bytes_sent_N.index_add_(0, torch.from_numpy(ids - self.lo).to(self.bytes_sent_N.device),
                                     torch.full((len(ids),), float(size), dtype=torch.float64).to(self.bytes_sent_N))
        average, senders = self._mean_of(x_KP, weights_R)
        if average is not None and self.lo == 0:  # the server's broadcast, counted once in the swarm
            self.bytes_sent_server += float(size * (senders if broadcast_to is None else len(broadcast_to)))
        return average

    def rows_mean(self, x_KP: Tensor) -> Tensor:
        out = self._mean_of(x_KP, None)[0]
        return x_KP.mean(0) if out is None else out

    # -- the rows held here --------------------------------------------------------------------------
    def mine(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        ids = ids[(ids >= self.lo) & (ids < self.hi)]
        return ids - self.lo, ids

    def own(self, x_N: Tensor) -> Tensor:
        return x_N[self.rows]

    def node_mean(self, values_K: Tensor) -> float:
        """A per-node metric's mean over this peer's nodes (a peer's rows are its own)."""
        return float(values_K.double().mean()) if len(values_K) else float("nan")

    def set_alive(self, alive_N) -> None:
        self.alive_N = None

    def set_threat(self, threat) -> None:
        """The run's model attack: this peer's Byzantine nodes send :meth:`_poison`'s messages."""
        self.threat, self._byzantine_R, self._seen = threat, None, None
        if threat is not None and len(threat.byzantine_idx):
            ids = threat.byzantine_idx.cpu().numpy()
            self._byzantine_ids = ids
            bad = torch.zeros(self.num_nodes, dtype=torch.bool)
            bad[torch.from_numpy(ids[(ids >= self.lo) & (ids < self.hi)] - self.lo)] = True
            self._byzantine_R = bad if bool(bad.any()) else None

