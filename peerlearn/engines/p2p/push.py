"""Asynchronous push-sum on a swarm: what a waking node's ``net.push`` does between peers.

The event engine's :class:`~peerlearn.engines.async_net.AsyncNet` delivers a push at once. On a swarm a waking
node keeps ``W_jj (x_j, w_j)`` and sends ``W_ij (x_j, w_j)`` to each out-neighbour ``i``: in place when ``i``
is on this peer, as a message (one row: the numerator and the weight) when it is on another. The mass that
arrives is added to its receiver's row at the peer's next push (any of its nodes waking): push-sum needs no
one to wait, and adding mass commutes with the local steps. A push to a node whose peer is not in the roster,
or a message not delivered, loses its mass in numerator and weight alike, so the de-biased models stay
averages of what arrived (Kempe, Dobra & Gehrke, FOCS 2003; Assran & Rabbat, IEEE TAC 2021).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from peerlearn.topology.clique import as_csr
from peerlearn.types import Tensor


class SwarmPushNet:
    """The ``net`` that :func:`peerlearn.algorithms.async_push_sum.async_push_sum` pushes through on a swarm.

    Args:
        peer: the :class:`~peerlearn.engines.p2p.gossip.GossipPeer` (its rows, roster and swarm).
        W: the run's column-stochastic mixing matrix.
        timeout_s: how long a message is tried before its mass is given up.
    """

    def __init__(self, peer, W, timeout_s: float):
        self.peer, self.timeout_s = peer, timeout_s
        self._W_csc = sp.csc_array(as_csr(W))
        self.arrived: dict[int, Tensor] = {}  # local row -> the mass that came for it since the last push

    def arrive(self, items: list) -> int:
        """Mailbox items ``(to, from, age, row)``: their mass, kept until the next push; how many."""
        for to, _, _, row in items:
            if self.peer.lo <= to < self.peer.hi:
                r = to - self.peer.lo
                self.arrived[r] = row if r not in self.arrived else self.arrived[r] + row
        return len(items)

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
        sent = torch.from_numpy(src[to != lo + src])  # a message per out-neighbour, counted as the simulator does
        p.bytes_sent_N.index_add_(0, sent, torch.full((len(sent),), float(y_RP.shape[1] * y_RP.element_size()),
                                                      dtype=p.bytes_sent_N.dtype))
        for i, j, weight in zip(to[~here], src[~here], w[~here]):
            p.post(int(i), int(j), float(weight) * y_RP[j:j + 1], 0.0, self.timeout_s)
        for r, mass in self.arrived.items():
            out[r] += mass.to(out)
        self.arrived = {}
        return out
