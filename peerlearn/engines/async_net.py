"""The network as asynchronous algorithms see it: who a waking node can reach, and what it sent.

The event engine (:mod:`peerlearn.engines.async_engine`) sets the current mixing matrix (after
faults: down nodes and failed links are gone) and hands this object to the algorithm's ``wake``.
``W_ij != 0`` (i != j) means that j can send to i, so a node's out-neighbours are the off-diagonal
entries of its column (its row, for a symmetric W). Every send is counted per sender, as in
:class:`~peerlearn.engines.comm.SimComm`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from peerlearn.device import from_host
from peerlearn.topology.clique import as_csr
from peerlearn.types import Tensor


class AsyncNet:
    def __init__(self, W: sp.csr_array, seed: int = 0):
        self.num_nodes = W.shape[0]
        self.rng = np.random.default_rng(seed)
        self.bytes_sent_N = np.zeros(self.num_nodes)
        self.bytes_sent_server = 0.0
        self.deferred: np.ndarray = np.empty(0, dtype=np.int64)
        self.busy_until_N = np.zeros(self.num_nodes)  # simulated time at which each node's compute ends
        self.slice_end = 0.0  # set by the engine: the end of the current time slice
        self.set_topology(W)

    def set_topology(self, W: sp.csr_array) -> None:
        """The mixing matrix in force (column j: what node j sends to whom)."""
        self.W = as_csr(W)
        self._W_csc = sp.csc_array(self.W)
        csc = self._W_csc  # W in CSC is W^T in CSR: row j lists j's out-neighbours
        out = sp.csr_array((csc.data.copy(), csc.indices.copy(), csc.indptr.copy()), shape=csc.shape[::-1])
        out.setdiag(0)
        out.eliminate_zeros()
        self._out = out
        self._out_degree = np.diff(out.indptr)

    # -- what an algorithm calls ---------------------------------------------------------------
    def random_peers(self, senders: np.ndarray) -> np.ndarray:
        """One uniformly random out-neighbour per sender; -1 for a sender with none (isolated or cut off)."""
        deg = self._out_degree[senders]
        pick = (self.rng.random(len(senders)) * deg).astype(np.int64)  # one draw per sender, peer or not
        has = deg > 0
        peers = np.full(len(senders), -1, dtype=np.int64)
        peers[has] = self._out.indices[self._out.indptr[senders[has]] + pick[has]]
        return peers

    def free(self, nodes: np.ndarray) -> np.ndarray:
        """Which of ``nodes`` can take on new work in this slice (not still computing)."""
        return self.busy_until_N[nodes] < self.slice_end

    def push(self, y_NP: Tensor, senders: np.ndarray) -> Tensor:
        """Push-sum delivery from ``senders`` only: each keeps ``W_jj y_j`` and sends ``W_ij y_j`` to its
        out-neighbours; every other row is unchanged. With all nodes sending this is ``W y``."""
        cols = self._W_csc[:, senders].tocoo()
        out = y_NP.clone()
        out[from_host(senders)] = 0
        vals = from_host(cols.data).to(y_NP.dtype)[:, None]
        src = from_host(senders[cols.col])
        out.index_add_(0, from_host(cols.row.astype(np.int64)), vals * y_NP[src])
        self.send(senders, y_NP.shape[1] * y_NP.element_size() * self._out_degree[senders])
        return out

    def server_pushes(self, delta_P: Tensor, count: int) -> tuple[Tensor, int]:
        """The pushes the parameter server applies at this wake, ``(their weighted pseudo-gradient sum, their
        number)``: here this wake's own (the simulator's server gets each push at once); on a swarm every peer's
        replica of the server also applies what the others broadcast (:mod:`peerlearn.engines.p2p.async_net`)."""
        return delta_P, count

    def send(self, senders: np.ndarray, bytes_each) -> None:
        """Count ``bytes_each`` (a number, or one per sender) sent by each of ``senders``."""
        np.add.at(self.bytes_sent_N, senders, bytes_each)

    def defer(self, wakers: np.ndarray) -> None:
        """These wakers could not act (their peer was busy): they keep their due time and retry next slice."""
        self.deferred = np.concatenate([self.deferred, np.asarray(wakers, dtype=np.int64)])

    # -- engine side ----------------------------------------------------------------------------
    def take_deferred(self) -> np.ndarray:
        out, self.deferred = self.deferred, np.empty(0, dtype=np.int64)
        return out

    @property
    def bytes_sent_total(self) -> float:
        return float(self.bytes_sent_N.sum() + self.bytes_sent_server)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "bytes_sent_N": self.bytes_sent_N.copy(),
                "bytes_sent_server": self.bytes_sent_server, "busy_until_N": self.busy_until_N.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.bytes_sent_N = state["bytes_sent_N"].copy()
        self.bytes_sent_server = state["bytes_sent_server"]
        self.busy_until_N = state["busy_until_N"].copy()
