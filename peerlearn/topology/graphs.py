"""Deterministic graph generators returning a symmetric sparse adjacency.

Names follow networkx (``cycle_graph``, ``path_graph``...). Each generator validates its
arguments and raises ``ValueError`` naming the offending parameter.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from peerlearn.topology.clique import Clique


def from_edges(num_nodes: int, src: np.ndarray, dst: np.ndarray) -> sp.csr_array:
    """Symmetric 0/1 adjacency from undirected edges; self-loops and duplicates dropped."""
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    rows, cols = np.concatenate([src, dst]), np.concatenate([dst, src])
    adj = sp.csr_array((np.ones(len(rows)), (rows, cols)), shape=(num_nodes, num_nodes))
    adj.sum_duplicates()
    adj.data[:] = 1.0
    return adj


def _check_num_nodes(num_nodes: int, minimum: int = 1) -> None:
    if int(num_nodes) != num_nodes or num_nodes < minimum:
        raise ValueError(f"num_nodes must be an integer >= {minimum}, got {num_nodes}")


def degrees(adj: sp.csr_array | Clique) -> np.ndarray:
    """Number of neighbours of every node."""
    if isinstance(adj, Clique):
        return adj.degrees()
    return np.diff(adj.indptr)


def _components(adj: sp.csr_array | Clique) -> int:
    if isinstance(adj, Clique):  # the clique is one component, every other node one more
        k = adj.num_members
        return (1 if k else 0) + adj.num_nodes - k if adj.off else adj.num_nodes
    return connected_components(adj, directed=False, return_labels=False)


def is_connected(adj: sp.csr_array | Clique) -> bool:
    return _components(adj) == 1


def require_connected(adj: sp.csr_array | Clique, name: str) -> sp.csr_array | Clique:
    """Return ``adj`` or raise ValueError if the graph falls apart into several components."""
    count = _components(adj)
    if count != 1:
        raise ValueError(f"graph {name} with {adj.shape[0]} nodes is disconnected ({count} components); "
                         "decentralized training needs a connected graph")
    return adj


def complete_graph(num_nodes: int) -> Clique:
    """Every node linked to every other node, held as a :class:`~peerlearn.topology.clique.Clique`
    (O(N) memory; ``.tocsr()`` gives the N (N - 1) explicit links)."""
    _check_num_nodes(num_nodes)
    return Clique(num_nodes)


def cycle_graph(num_nodes: int) -> sp.csr_array:
    """Ring: node i linked to i-1 and i+1 (mod N)."""
    _check_num_nodes(num_nodes)
    i = np.arange(num_nodes)
    return from_edges(num_nodes, i, (i + 1) % num_nodes)


def path_graph(num_nodes: int) -> sp.csr_array:
    """Line: node i linked to i+1, no wrap-around."""
    _check_num_nodes(num_nodes)
    i = np.arange(num_nodes - 1)
    return from_edges(num_nodes, i, i + 1)


def star_graph(num_nodes: int) -> sp.csr_array:
    """Node 0 linked to every other node (networkx counts leaves; here N counts all nodes)."""
    _check_num_nodes(num_nodes)
    leaves = np.arange(1, num_nodes)
    return from_edges(num_nodes, np.zeros_like(leaves), leaves)


def torus_graph(num_nodes: int, rows: int | None = None) -> sp.csr_array:
    """2-D torus (wrap-around grid) of ``rows x (N / rows)`` nodes, 4 neighbours each.

    Without ``rows`` the most square factorisation of N is used.
    """
    _check_num_nodes(num_nodes, 4)
    if rows is None:
        rows = max(r for r in range(1, int(np.sqrt(num_nodes)) + 1) if num_nodes % r == 0)
    if rows < 2 or num_nodes % rows or num_nodes // rows < 2:
        raise ValueError(f"torus needs num_nodes = rows x cols with rows, cols >= 2; "
                         f"num_nodes={num_nodes} has no such factorisation (rows={rows})")
    cols = num_nodes // rows
    r, c = np.divmod(np.arange(num_nodes), cols)
    right = r * cols + (c + 1) % cols
    down = ((r + 1) % rows) * cols + c
    i = np.arange(num_nodes)
    return from_edges(num_nodes, np.concatenate([i, i]), np.concatenate([right, down]))


def hypercube_graph(num_nodes: int) -> sp.csr_array:
    """Hypercube: nodes whose indices differ in one bit are linked; N must be a power of 2."""
    _check_num_nodes(num_nodes, 2)
    if num_nodes & (num_nodes - 1):
        raise ValueError(f"hypercube needs num_nodes to be a power of 2, got {num_nodes}")
    i = np.arange(num_nodes)
    bits = [1 << b for b in range(num_nodes.bit_length() - 1)]
    return from_edges(num_nodes, np.concatenate([i] * len(bits)), np.concatenate([i ^ b for b in bits]))


def exponential_graph(num_nodes: int) -> sp.csr_array:
    """Static exponential graph: i linked to i + 2^k (mod N) for 2^k < N, taken undirected.

    References:
        Ying et al., "Exponential Graph is Provably Efficient for Decentralized Deep Training",
        NeurIPS 2021; Assran et al., "Stochastic Gradient Push", ICML 2019.
    """
    _check_num_nodes(num_nodes, 2)
    i = np.arange(num_nodes)
    hops = [1 << k for k in range(int(np.ceil(np.log2(num_nodes))))]
    return from_edges(num_nodes, np.concatenate([i] * len(hops)),
                      np.concatenate([(i + h) % num_nodes for h in hops]))


# ---------------------------------------------------------------------------------------------
# Specs (topology.graph)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.topology.base import GRAPHS, GraphSpec, config_error  # noqa: E402


@GRAPHS.register
class CompleteSpec(GraphSpec):
    """Every node linked to every other node (gossip over it is an exact average)."""

    name: Literal["complete"] = "complete"
    factory: ClassVar = staticmethod(complete_graph)


@GRAPHS.register
class RingSpec(GraphSpec):
    """A cycle: node i linked to i-1 and i+1."""

    name: Literal["ring"] = "ring"
    factory: ClassVar = staticmethod(cycle_graph)


@GRAPHS.register
class CycleSpec(RingSpec):
    """The ring, under networkx's name."""

    name: Literal["cycle"] = "cycle"


@GRAPHS.register
class PathSpec(GraphSpec):
    """A path: the ring without one edge."""

    name: Literal["path"] = "path"
    factory: ClassVar = staticmethod(path_graph)


@GRAPHS.register
class StarSpec(GraphSpec):
    """One hub linked to every other node."""

    name: Literal["star"] = "star"
    factory: ClassVar = staticmethod(star_graph)


@GRAPHS.register
class TorusSpec(GraphSpec):
    """A 2-D torus (grid with wrap-around), rows x num_nodes/rows."""

    name: Literal["torus"] = "torus"
    rows: int | None = Field(None, ge=2, description="rows of the torus (default: most square)")
    factory: ClassVar = staticmethod(torus_graph)

    def check(self, cfg) -> None:
        if self.rows is not None and cfg.num_nodes % self.rows:
            raise config_error("topology.rows", f"must divide num_nodes={cfg.num_nodes}, got {self.rows}")


@GRAPHS.register
class HypercubeSpec(GraphSpec):
    """The hypercube on 2^d nodes: neighbours differ in one bit."""

    name: Literal["hypercube"] = "hypercube"
    factory: ClassVar = staticmethod(hypercube_graph)

    def check(self, cfg) -> None:
        n = cfg.num_nodes
        if n & (n - 1):
            raise config_error("num_nodes", f"graph hypercube needs a power of 2, got {n}")


@GRAPHS.register
class ExponentialSpec(GraphSpec):
    """Static exponential graph: node i linked to i +- 2^k (Ying et al., NeurIPS 2021)."""

    name: Literal["exponential"] = "exponential"
    factory: ClassVar = staticmethod(exponential_graph)
