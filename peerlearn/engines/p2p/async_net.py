"""The network as asynchronous algorithms see it on a swarm: a waking node's ``net.push`` (asynchronous push-sum)
and ``net.server_pushes`` (asynchronous local SGD) between peers.

**Push-sum.** The event engine's :class:`~peerlearn.engines.async_net.AsyncNet` delivers a push at once. On
a swarm a waking node keeps ``W_jj (x_j, w_j)`` and sends ``W_ij (x_j, w_j)`` to each out-neighbour ``i``: in
place when ``i`` is on this peer, as a message (one row: the numerator and the weight) when it is on another. The mass that
arrives is added to its receiver's row at the peer's next push (any of its nodes waking): push-sum needs no
one to wait, and adding mass commutes with the local steps. A push to a node whose peer is not in the roster,
or a message not delivered, loses its mass in numerator and weight alike, so the de-biased models stay
averages of what arrived (Kempe, Dobra & Gehrke, FOCS 2003; Assran & Rabbat, IEEE TAC 2021).

**A server without a server.** Asynchronous local SGD's workers push pseudo-gradients to a parameter server
(Liu et al., "Asynchronous Local-SGD Training for Language Modeling", 2024). A swarm has none: every peer
holds a replica of the server's model and applies its own workers' pushes and every push the other peers
broadcast (one message per peer and wake: the weighted sum of its wakers' pseudo-gradients and their
number), at its next wake. Without outer momentum the replicas that received every push hold the same
model (the updates commute); with delayed Nesterov they differ in which pushes share a momentum step.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from peerlearn.topology.clique import as_csr
from peerlearn.types import Tensor


class SwarmAsyncNet:
    """The ``net`` of asynchronous algorithms that ``wake`` on a swarm (see the module doc).

    Args:
        peer: the :class:`~peerlearn.engines.p2p.gossip.GossipPeer` (its rows, roster and swarm).
        W: the run's column-stochastic mixing matrix.
        timeout_s: how long a message is tried before its mass is given up.
    """

    def __init__(self, peer, W, timeout_s: float):
        self.peer, self.timeout_s = peer, timeout_s
        self._W_csc = sp.csc_array(as_csr(W))
        self.num_nodes = W.shape[0]  # every node of the run
        self.arrived: list = []  # mailbox items (to, from, age, row) since the last push
        self.bytes_sent_server = 0.0

    def arrive(self, items: list) -> int:
        """Mailbox items ``(to, from, age, row)`` for this peer's nodes, kept until the next wake; how many."""
        mine = [item for item in items if self.peer.lo <= item[0] < self.peer.hi]
        self.arrived.extend(mine)
        return len(mine)

    def send(self, senders: np.ndarray, bytes_each) -> None:
        """Count ``bytes_each`` sent by each of ``senders`` (local indices), as the simulator counts."""
        self.peer.bytes_sent_N.index_add_(0, torch.from_numpy(np.asarray(senders, dtype=np.int64)),
                                          torch.full((len(senders),), float(bytes_each), dtype=torch.float64))

    def server_pushes(self, delta_P: Tensor, count: int) -> tuple[Tensor, int]:
        """This wake's pushes (the weighted sum ``delta_P`` of ``count`` pseudo-gradients) broadcast to every other
        peer's replica, and every push that came from them since the last wake added: what this replica applies."""
        p = self.peer
        row = torch.cat([delta_P.float(), torch.tensor([float(count)])])[None]
        for peer in p.peers:
            if peer != p.swarm.peer_id:
                first = p.roster[peer]["nodes"][0]  # a push for the peer's replica: addressed to its first node
                p.post(first, 0, row, 0.0, self.timeout_s)
        total = delta_P.clone()
        for _, _, _, pushed in self.arrived:
            total += pushed[:-1].to(total)
            count += int(round(float(pushed[-1])))
        self.arrived = []
        return total, count

    def push(self, y_RP: Tensor, wakers: np.ndarray) -> Tensor:
        """Every local row after ``wakers`` (local indices) pushed and the mass that arrived was added."""
        p = self.peer
        lo, hi = p.lo, p.hi
        cols = self._W_csc[:, lo + wakers].tocoo()
        out = y_RP.clone()
        out[torch.from_numpy(wakers)] = 0
        to, src, w = cols.row.astype(np.int64), wakers[cols.col], cols.data
        here = (to >= lo) & (to < hi)
        out.index_add_(0, torch.from_numpy(to[here] - lo),
                       torch.from_numpy(w[here]).to(y_RP.dtype)[:, None] * y_RP[torch.from_numpy(src[here])])
        self.send(src[to != lo + src], y_RP.shape[1] * y_RP.element_size())  # a message per out-neighbour
        for i, j, weight in zip(to[~here], src[~here], w[~here]):
            p.post(int(i), int(j), float(weight) * y_RP[j:j + 1], 0.0, self.timeout_s)
        for to, _, _, mass in self.arrived:
            out[to - lo] += mass.to(out)
        self.arrived = []
        return out
