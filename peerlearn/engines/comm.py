"""In-process communication for the batched simulator.

:class:`SimComm` moves the rows of ``params_NP`` along the round's topology and counts the
bytes each node sends, from what is sent: a message of P float32 values costs ``4 P`` bytes
per receiving neighbour. The distributed engine implements the same methods over
``torch.distributed``, so algorithms never know which one they run on.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from peerlearn.aggregators.mean import mean
from peerlearn.attacks.model_poisoning import HonestView
from peerlearn.device import from_host
from peerlearn.topology.clique import Clique, as_csr
from peerlearn.types import Tensor


def torch_csr(mat: sp.csr_array) -> Tensor:
    """``mat`` as a float32 torch CSR tensor (what makes gossip one fast ``addmm``) on the default device."""
    with warnings.catch_warnings():  # "sparse CSR is beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(from_host(mat.indptr.astype(np.int64)), from_host(mat.indices.astype(np.int64)),
                                       from_host(mat.data.astype(np.float32)), size=mat.shape, check_invariants=False)


def padded_neighbours(indptr: np.ndarray, indices: np.ndarray, width: int, pad_R: np.ndarray) -> tuple[Tensor, Tensor]:
    """``(nbr_RK, valid_RK)``: each CSR row's column indices left-aligned in ``width`` slots, the rest
    filled with the row's ``pad_R`` value and marked invalid."""
    num_rows = len(indptr) - 1
    nbr = np.repeat(np.asarray(pad_R, dtype=np.int64)[:, None], max(width, 0), axis=1)
    valid = np.zeros((num_rows, width), dtype=bool)
    rows = np.repeat(np.arange(num_rows), np.diff(indptr))
    pos = np.arange(len(indices)) - indptr[rows]
    nbr[rows, pos], valid[rows, pos] = indices, True
    return from_host(nbr), from_host(valid)


class Threat(NamedTuple):
    """Byzantine nodes and what they send instead of their honest message.

    ``attack(own_BP, seen, generator) -> msg_BP`` (hyper-parameters bound; ``seen`` an
    :class:`~peerlearn.attacks.HonestView`);
    ``view_BN[b, j] > 0`` where Byzantine node b sees honest node j's message (rows sum to 1);
    ``sybil``: every Byzantine identity sends the first one's message (one adversary, many clones);
    ``memory``: with ``threat.space: update``, a dict holding ``"prev"``, the messages as received in the
    previous exchange (the attack sees the honest updates, each message minus the previous one, and a Byzantine
    node sends its previous message plus the crafted update); None in model space.
    """

    byzantine_idx: Tensor
    attack: Callable
    view_BN: Tensor
    sybil: bool
    generator: torch.Generator
    memory: dict | None = None


def poison(threat: Threat | None, x_NP: Tensor) -> Tensor:
    """The messages as received: Byzantine rows replaced by the attack (honest rows untouched); ``x_NP``
    itself when nobody attacks. Every engine applies it to all N messages, so the attack's random draws
    and what it sees are the same wherever it runs."""
    t = threat
    if t is None or len(t.byzantine_idx) == 0:
        return x_NP
    if t.memory is None:
        msg = t.attack(x_NP[t.byzantine_idx], HonestView(x_NP, t.view_BN), t.generator)
    else:  # update space: the attack crafts an update from the honest ones, sent on top of the previous message
        prev = t.memory.get("prev")
        prev = x_NP if prev is None else prev.to(x_NP)
        delta = x_NP - prev
        byz = t.byzantine_idx
        msg = prev[byz] + t.attack(delta[byz], HonestView(delta, t.view_BN), t.generator)
    if t.sybil:
        msg = msg[:1].expand_as(msg)
    out = x_NP.clone()
    out[t.byzantine_idx] = msg.to(x_NP.dtype)
    if t.memory is not None:
        t.memory["prev"] = out
    return out


def threat_state(threat: Threat | None) -> dict:
    """What a threat carries between rounds, for a checkpoint: its generator's state and what an update-space
    attack remembers of the previous exchange (None where there is nothing)."""
    prev = None if threat is None or threat.memory is None else threat.memory.get("prev")
    return {"threat_generator": None if threat is None else threat.generator.get_state(),
            "threat_prev": None if prev is None else prev.clone()}


def load_threat_state(threat: Threat | None, state: dict) -> None:
    """Put back what :func:`threat_state` saved (keys missing from an older checkpoint: nothing to restore)."""
    if threat is None:
        return
    if state.get("threat_generator") is not None:
        threat.generator.set_state(state["threat_generator"])
    if threat.memory is not None:
        threat.memory.clear()
        if state.get("threat_prev") is not None:
            threat.memory["prev"] = state["threat_prev"].clone()


class SimComm:
    """Communication over a mixing matrix ``W_NN`` (set per round with :meth:`set_topology`).

    Attributes:
        bytes_sent_N: cumulative bytes sent by each node (float64).
        bytes_sent_server: cumulative bytes sent by a server (FedAvg-style baselines).
    """

    def __init__(self, W: sp.csr_array | None = None, num_nodes: int | None = None):
        if W is None and num_nodes is None:
            raise ValueError("SimComm needs a mixing matrix or num_nodes")
        self.num_nodes = int(W.shape[0] if W is not None else num_nodes)
        self.num_global = self.num_nodes
        self.node_ids = None  # the rows an algorithm holds are every node, in order (a rank holds its own)
        self.bytes_sent_N = torch.zeros(self.num_nodes, dtype=torch.float64)
        self.bytes_sent_server = 0.0
        self.W = None
        self.threat: Threat | None = None
        self.alive_N: Tensor | None = None  # None: every node is up
        self.collective_calls = 0  # all-reduces, server averages, multicasts so far (the clock's barriers)
        self.latency_hops = 0  # messages in sequence on the rings' critical paths so far (clock.collective_latency)
        self.record_sent = False  # keep the last gossip messages as received (attribution, stateful combine steps)
        self.sent_NP: Tensor | None = None  # ... here, when record_sent (otherwise nothing is held between rounds)
        if W is not None:
            self.set_topology(W)

    # -- topology ---------------------------------------------------------------------------
    def set_topology(self, W: sp.csr_array | Clique) -> None:
        """Use mixing matrix ``W`` (rows: receivers, columns: senders) from now on."""
        if W.shape != (self.num_nodes, self.num_nodes):
            raise ValueError(f"mixing matrix has shape {W.shape}, expected {(self.num_nodes,) * 2}")
        self.W, self._table = W, None  # gather()'s neighbour table is built when first needed
        if isinstance(W, Clique):  # a clique (complete graph, sampled block) mixes as a mean: O(N P)
            self._clique, self._off_csr, self._by_dtype = W, None, {}
            self.degree_N = from_host(W.degrees())
            self._out_degree_N = self.degree_N.double()
            self._clique_idx = None if W.members is None else from_host(W.members)
            return
        W = sp.csr_array(W)
        off = sp.csr_array(W - sp.diags_array(W.diagonal(), format="csr"))
        off.eliminate_zeros()
        self.W = W
        self._off = torch_csr(off)
        rowsum_N = np.asarray(off.sum(axis=1)).ravel()
        self._off_rowsum_N1 = from_host(rowsum_N.astype(np.float32).reshape(-1, 1))
        self._diag_N1 = from_host(np.asarray(W.diagonal(), dtype=np.float32).reshape(-1, 1))
        # A - diag(A 1): mix of unpoisoned rows in one sparse product, x + (A - diag(A 1)) x
        self._laplacian = torch_csr(sp.csr_array(off - sp.diags_array(rowsum_N, format="csr")))
        self._by_dtype = {torch.float32: (self._off, self._off_rowsum_N1, self._diag_N1, self._laplacian)}
        self.degree_N = from_host(np.diff(off.indptr).astype(np.int64))
        self._off_csr = off
        self._out_degree_N = from_host(np.bincount(off.indices, minlength=self.num_nodes)).double()
        # an explicit complete graph with one weight for every link mixes as the clique it is
        n, diagonal = self.num_nodes, W.diagonal()
        self._clique, self._clique_idx = None, None
        if n > 2 and off.nnz == n * (n - 1) and np.all(off.data == off.data[0]) and np.all(diagonal == diagonal[0]):
            self._clique = Clique(n, off=float(off.data[0]), diag=float(diagonal[0]))

    def _neighbour_table(self) -> tuple[Tensor, Tensor]:
        """``(nbr_NK, valid_NK)``: row i lists N(i), padded with i itself (masked)."""
        if self._table is None:
            if self._off_csr is None:  # a clique: its explicit links, needed only here
                full = as_csr(self.W)
                self._off_csr = sp.csr_array(full - sp.diags_array(full.diagonal(), format="csr"))
                self._off_csr.eliminate_zeros()
            off = self._off_csr
            k = int(self.degree_N.max()) if self.num_nodes else 0
            self._table = padded_neighbours(off.indptr, off.indices, k, np.arange(self.num_nodes))
        return self._table

    def neighbour_ids(self) -> tuple[Tensor, Tensor]:
        """``(ids_NK, valid_NK)``: the node ids of :meth:`gather`'s columns (``include_self``: column 0 is the
        node itself), for combine rules that keep per-neighbour state."""
        nbr, valid = self._neighbour_table()
        ids = torch.cat([torch.arange(self.num_nodes)[:, None], nbr], 1)
        return ids, torch.cat([torch.ones(self.num_nodes, 1, dtype=torch.bool), valid], 1)

    def dense_W(self) -> Tensor:
        """The round's mixing matrix, dense (``W[k, j]``: k's weight on j)."""
        return torch.as_tensor(as_csr(self.W).toarray(), dtype=torch.float32)

    def _weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(off-diagonal CSR ``A``, its row sums, the diagonal, ``A - diag(A 1)``) in ``dtype`` (float32 built,
        others cached)."""
        if dtype not in self._by_dtype:
            self._by_dtype[dtype] = tuple(t.to(dtype) for t in self._by_dtype[torch.float32])
        return self._by_dtype[dtype]

    def set_alive(self, alive_N: Tensor | None) -> None:
        """Nodes that are up this round (None: all). Down nodes send nothing: collectives skip them;
        gossip reaches them only through the topology, from which the engine removed their links."""
        self.alive_N = None if alive_N is None or bool(alive_N.all()) else alive_N

    def _up(self, idx: Tensor) -> Tensor:
        return idx if self.alive_N is None else idx[self.alive_N[idx]]

    # -- the rows held here (every node; a distributed rank holds its own) ------------------------
    def mine(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Of the global node ids ``ids``, those whose rows are held here: (their positions in the rows, their
        ids). An algorithm that samples nodes samples all ``num_global`` and steps the ones it holds."""
        return ids, ids

    def own(self, x_N: Tensor) -> Tensor:
        """The entries of the held rows in a per-node tensor over all ``num_global`` nodes."""
        return x_N

    def node_mean(self, values_K: Tensor) -> float:
        """The mean of a per-node metric over every node that computed one (every rank's, distributed)."""
        return float(values_K.mean())

    def rows_mean(self, x_KP: Tensor) -> Tensor:
        """The mean of rows held for some nodes (every rank's, distributed), as ``x_P``: bookkeeping that sends
        nothing, such as a server's memory of the last update of each worker."""
        return x_KP.mean(0)

    # -- attacks at the message boundary ---------------------------------------------------------
    def set_threat(self, threat: Threat | None) -> None:
        self.threat = threat

    def _poison(self, x_NP: Tensor) -> Tensor:
        sent = poison(self.threat, x_NP)
        if self.record_sent:
            self.sent_NP = sent
        return sent

    # -- accounting ---------------------------------------------------------------------------
    @staticmethod
    def message_bytes(x_P_or_NP: Tensor) -> int:
        """Bytes of one node's message: its row as sent (dense values, no metadata)."""
        return int(x_P_or_NP.shape[-1] * x_P_or_NP.element_size())

    def _count_neighbour_send(self, x_NP: Tensor, message_bytes: int | Tensor | None) -> None:
        size = self.message_bytes(x_NP) if message_bytes is None else message_bytes
        self.bytes_sent_N += self._out_degree_N * size

    # -- primitives ----------------------------------------------------------------------------
    def mix(self, x_NP: Tensor, message_bytes: int | Tensor | None = None) -> Tensor:
        """Gossip step ``x_i + sum_j W_ij (x_j - x_i)``: every node sends its row to its neighbours.

        Equal to ``W @ x`` in exact arithmetic; this form keeps the network mean of float32
        rows from drifting when weights such as 1/3 do not sum to exactly one.
        """
        self._count_neighbour_send(x_NP, message_bytes)
        sent = self._poison(x_NP)
        if self._clique is not None:
            return self._clique_mix(x_NP, sent, push=False)
        off, rowsum, _, lap = self._weights(x_NP.dtype)
        if sent is x_NP:  # nobody poisons: x + (A - diag(A 1)) x, one pass
            return torch.addmm(x_NP, lap, x_NP)
        out = torch.addmm(x_NP, off, sent)  # x + A m   (A: off-diagonal weights, m: messages)
        return out.addcmul_(rowsum, x_NP, value=-1.0)  # - diag(A 1) x

    def push(self, x_NP: Tensor, message_bytes: int | Tensor | None = None) -> Tensor:
        """``W x`` as a plain weighted sum, for column-stochastic ``W`` (push-sum): each node keeps
        ``W_ii`` of its own row and receives ``W_ij x_j`` from each in-neighbour ``j``."""
        self._count_neighbour_send(x_NP, message_bytes)
        sent = self._poison(x_NP)
        if self._clique is not None:
            return self._clique_mix(x_NP, sent, push=True)
        off, _, diag, _ = self._weights(x_NP.dtype)
        return torch.addmm(diag * x_NP, off, sent)

    def _clique_mix(self, x_NP: Tensor, sent_NP: Tensor, push: bool) -> Tensor:
        """:meth:`mix` (``x_i + w sum_{j != i} (m_j - x_i)``) or :meth:`push` (``W_ii x_i + w sum_{j != i} m_j``)
        on a clique with link weight ``w``: each member receives the members' sum minus its own message."""
        c, idx = self._clique, self._clique_idx
        x, m = (x_NP, sent_NP) if idx is None else (x_NP[idx], sent_NP[idx])
        received = m.sum(0, keepdim=True) - m  # every other member's message
        if push:
            out = torch.add(x * c.diag, received, alpha=c.off)
        else:
            out = torch.add(x, received, alpha=c.off).add_(x, alpha=-c.off * (c.num_members - 1))
        if idx is None:
            return out
        full = x_NP * c.rest if push else x_NP.clone()
        full[idx] = out
        return full

    def gather(self, x_NP: Tensor, include_self: bool = True,
               message_bytes: int | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Every node's received rows ``x_NKP`` with mask ``valid_NK`` (padding is False).

        With ``include_self`` column 0 is the node's own row (always valid), then its neighbours.
        """
        self._count_neighbour_send(x_NP, message_bytes)
        sent = self._poison(x_NP)
        nbr, valid = self._neighbour_table()
        received = sent[nbr]
        if include_self:  # a node's own model is never poisoned in its own hands
            received = torch.cat([x_NP[:, None, :], received], 1)
            valid = torch.cat([torch.ones(self.num_nodes, 1, dtype=torch.bool), valid], 1)
        return received, valid

    def multicast_mean(self, x_RP: Tensor, senders: Tensor, receivers: Tensor) -> Tensor | None:
        """Every sender sends its row to every receiver (not to itself); returns ``x_P``, the mean of the
        senders' rows, which is what each receiver holds after averaging what it got, or None when
        every sender is down (nothing arrives).

        Peer-to-peer, no server: bytes go to the senders, one message per (sender, other receiver).
        """
        self.collective_calls += 1
        if self.alive_N is not None:  # down senders send nothing; down receivers receive nothing
            up = self.alive_N[senders]
            if not bool(up.any()):
                return None
            x_RP, senders, receivers = x_RP[up], senders[up], self._up(receivers)
        others = len(receivers) - torch.isin(senders, receivers).to(torch.float64)
        self.bytes_sent_N.index_add_(0, senders, others * self.message_bytes(x_RP))
        return mean(x_RP)

    def all_gather(self, x_NP: Tensor, message_bytes: int | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Every node that is up sends its row to every other one: returns those rows and their node ids.

        Counted as a ring all-gather: each node sends or forwards ``N-1`` messages of the mean size
        (``message_bytes``: encoded sizes, per row or one for all; default the dense row).
        """
        self.collective_calls += 1
        rows = torch.arange(self.num_nodes) if self.alive_N is None else torch.nonzero(self.alive_N).flatten()
        self.latency_hops += max(len(rows) - 1, 0)  # a ring all-gather: N - 1 steps
        sizes = torch.as_tensor(self.message_bytes(x_NP) if message_bytes is None else message_bytes,
                                dtype=torch.float64).expand(self.num_nodes)
        if len(rows):
            self.bytes_sent_N[rows] += (len(rows) - 1) * float(sizes[rows].mean())
        return x_NP[rows], rows

    def all_reduce_mean(self, x_NP: Tensor, weights_N: Tensor | None = None,
                        message_bytes: int | Tensor | None = None) -> Tensor:
        """Weighted mean of all rows (weights default to uniform), as ``x_P``.

        Dense rows are counted as a ring all-reduce: each node sends ``2 (N-1)/N`` messages. Encoded
        (compressed) rows, given with their sizes ``message_bytes``, cannot be summed on the way
        without decoding and re-encoding at every hop, so they are all-gathered (:meth:`all_gather`).
        """
        if message_bytes is not None:
            sent, rows = self.all_gather(x_NP, message_bytes)
            return mean(sent, weights_K=None if weights_N is None else weights_N[rows])
        self.collective_calls += 1
        n = self.num_nodes if self.alive_N is None else int(self.alive_N.sum())
        self.latency_hops += 2 * max(n - 1, 0)
        if self.alive_N is not None:  # the all-reduce runs among the nodes that are up
            up = self.alive_N
            self.bytes_sent_N[up] += 2.0 * (n - 1) / max(n, 1) * self.message_bytes(x_NP)
            return mean(x_NP[up], weights_K=None if weights_N is None else weights_N[up])
        self.bytes_sent_N += 2.0 * (n - 1) / n * self.message_bytes(x_NP)
        return mean(x_NP, weights_K=weights_N)

    def server_average(self, x_RP: Tensor, rows: Tensor, weights_R: Tensor | None = None,
                       broadcast_to: Tensor | None = None) -> Tensor | None:
        """Nodes ``rows`` upload their rows; a server averages them and sends the result to ``broadcast_to``;
        None when every node of ``rows`` is down (the server has nothing to average).

        ``broadcast_to`` defaults to ``rows``. Upload bytes go to the senders, download bytes to the server.
        """
        self.collective_calls += 1
        if self.alive_N is not None:  # only nodes that are up upload and receive
            up = self.alive_N[rows]
            if not bool(up.any()):
                return None
            broadcast_to = self._up(rows if broadcast_to is None else broadcast_to)
            x_RP, rows = x_RP[up], rows[up]
            weights_R = None if weights_R is None else weights_R[up]
        size = self.message_bytes(x_RP)
        self.bytes_sent_N.index_add_(0, rows, torch.full((len(rows),), float(size), dtype=torch.float64))
        self.bytes_sent_server += float(size * len(rows if broadcast_to is None else broadcast_to))
        return mean(x_RP, weights_K=weights_R)

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The byte counters (the topology and alive set are re-derived from the round on resume)."""
        return {"bytes_sent_N": self.bytes_sent_N.clone(), "bytes_sent_server": self.bytes_sent_server,
                **threat_state(self.threat)}

    def load_state_dict(self, state: dict) -> None:
        self.bytes_sent_N = state["bytes_sent_N"].to(self.bytes_sent_N.device, copy=True)
        self.bytes_sent_server = float(state["bytes_sent_server"])
        load_threat_state(self.threat, state)

    # -- totals ----------------------------------------------------------------------------------
    @property
    def bytes_sent_total(self) -> float:
        return float(self.bytes_sent_N.sum()) + self.bytes_sent_server

