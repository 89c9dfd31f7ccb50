"""Clique-structured matrices: a complete graph, or one clique among some nodes, held as its members.

A complete graph on N nodes has N (N - 1) links: as a sparse matrix it costs O(N^2) memory and
O(N^2 P) work per gossip step (59 s per round at N = 1,024 and no build at all at 16,384, issue 16),
although Metropolis-Hastings gossip over it is just the network mean. :class:`Clique` holds such a
matrix as its members and three values, so it can be built, mixed and priced in O(N) and O(N P):

    M_ij = off    for members i != j,
    M_ii = diag   for members i,
    M_ii = rest   for the other nodes (isolated: 0 in an adjacency, 1 in a mixing matrix),
    0 elsewhere.

An adjacency is ``Clique(n)`` (off 1, diag 0, rest 0); Metropolis-Hastings, max-degree and uniform
weights on it are ``Clique(n, members, off=1/k, diag=1/k, rest=1)``: each member takes the mean of the
k members' rows. Sampled-clients schedules (k nodes averaging together) and a complete graph with
crashed nodes are the same shape. Consumers that need explicit entries (gathering neighbour tables,
link failures, message loss, pairwise privacy noise, the asynchronous and distributed engines) call
:func:`as_csr`, which materialises it.

References:
    Xiao & Boyd, "Fast linear iterations for distributed averaging", Systems & Control Letters 2004
    (Metropolis-Hastings weights; on a complete graph they are 1/N, exact averaging in one step).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class Clique:
    """A square matrix of N rows that is a clique among ``members`` (all nodes when None)."""

    def __init__(self, num_nodes: int, members: np.ndarray | None = None, *, off: float = 1.0, diag: float = 0.0,
                 rest: float = 0.0):
        self.num_nodes = int(num_nodes)
        if members is not None:
            members = np.unique(np.asarray(members, dtype=np.int64))
            if len(members) == self.num_nodes:
                members = None
        self.members = members
        self.off, self.diag, self.rest = float(off), float(diag), float(rest)

    # -- what scipy matrices also answer ---------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_nodes, self.num_nodes)

    @property
    def num_members(self) -> int:
        return self.num_nodes if self.members is None else len(self.members)

    @property
    def nnz(self) -> int:
        k, n = self.num_members, self.num_nodes
        return (k * (k - 1) if self.off else 0) + (k if self.diag else 0) + ((n - k) if self.rest else 0)

    def member_mask(self) -> np.ndarray:
        mask = np.zeros(self.num_nodes, dtype=bool)
        mask[slice(None) if self.members is None else self.members] = True
        return mask

    def diagonal(self) -> np.ndarray:
        return np.where(self.member_mask(), self.diag, self.rest)

    def degrees(self) -> np.ndarray:
        """Links per node (off-diagonal non-zeros of its row)."""
        k = self.num_members
        return np.where(self.member_mask(), k - 1 if self.off else 0, 0).astype(np.int64)

    def with_members(self, members: np.ndarray) -> "Clique":
        """The same values on a clique among ``members`` only (they must be members already)."""
        return Clique(self.num_nodes, members, off=self.off, diag=self.diag, rest=self.rest)

    def tocsr(self) -> sp.csr_array:
        """The explicit matrix (O(k^2) entries: for consumers that need every link)."""
        n, k = self.num_nodes, self.num_members
        members = np.arange(n) if self.members is None else self.members
        # row r of the clique lists every other member, in increasing order
        j = np.arange(max(k - 1, 0), dtype=np.int64)
        pos = j[None, :] + (j[None, :] >= np.arange(k, dtype=np.int64)[:, None])
        rows = np.repeat(members, max(k - 1, 0))
        cols = members[pos].ravel() if k > 1 else np.empty(0, dtype=np.int64)
        vals = np.full(len(rows), self.off)
        diag = self.diagonal()
        rows = np.concatenate([rows, np.arange(n)])
        cols = np.concatenate([cols, np.arange(n)])
        vals = np.concatenate([vals, diag])
        out = sp.csr_array((vals, (rows, cols)), shape=self.shape)
        out.eliminate_zeros()
        return out

    def toarray(self) -> np.ndarray:
        return self.tocsr().toarray()

    def __repr__(self) -> str:
        return (f"Clique(num_nodes={self.num_nodes}, members={self.num_members}, off={self.off:g}, "
                f"diag={self.diag:g}, rest={self.rest:g})")


def as_csr(matrix) -> sp.csr_array:
    """``matrix`` as a scipy CSR array (a :class:`Clique` is materialised)."""
    return matrix.tocsr() if isinstance(matrix, Clique) else sp.csr_array(matrix)


def uniform_clique_weights(adj: Clique) -> Clique:
    """Mixing weights on a clique adjacency: each member averages the k members (weights 1/k); others
    keep their model. This is Metropolis-Hastings and max-degree weights on a clique."""
    k = adj.num_members
    return Clique(adj.num_nodes, adj.members, off=1.0 / k, diag=1.0 / k, rest=1.0)
