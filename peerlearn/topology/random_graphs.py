"""Seeded random graph generators (networkx underneath) and user-supplied graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from peerlearn.spec import config_error
from peerlearn.topology.graphs import from_edges


def from_networkx(graph) -> sp.csr_array:
    """Adjacency of a networkx graph; nodes are renumbered 0..N-1 in ``graph.nodes`` order."""
    index = {node: k for k, node in enumerate(graph.nodes)}
    edges = np.array([(index[u], index[v]) for u, v in graph.edges], dtype=np.int64).reshape(-1, 2)
    return from_edges(len(index), edges[:, 0], edges[:, 1])


def from_edge_list(path: str | Path, num_nodes: int | None = None) -> sp.csr_array:
    """Adjacency from a text file of ``u v`` lines (integers 0..N-1; ``#`` starts a comment)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"edge list file {str(path)!r} does not exist")
    try:
        edges = np.loadtxt(path, dtype=np.int64, comments="#", ndmin=2, usecols=(0, 1))
    except ValueError as err:
        raise ValueError(f"edge list file {str(path)!r}: expected lines 'u v' of integers ({err})") from None
    if edges.size and edges.min() < 0:
        raise ValueError(f"edge list file {str(path)!r}: node ids must be >= 0")
    found = int(edges.max()) + 1 if edges.size else 0
    num_nodes = found if num_nodes is None else num_nodes
    if found > num_nodes:
        raise ValueError(f"edge list file {str(path)!r} names node {found - 1} but num_nodes={num_nodes}")
    return from_edges(num_nodes, edges[:, 0], edges[:, 1])


def read_edge_list(path: str, num_nodes: int, where: str) -> sp.csr_array:
    """An edge-list file's adjacency, which must have exactly ``num_nodes`` nodes."""
    try:
        adj = from_edge_list(path, num_nodes=num_nodes)
    except ValueError as err:
        raise config_error(where, str(err)) from None
    if adj.shape[0] != num_nodes:
        raise config_error(where, f"the edge list {path} has {adj.shape[0]} nodes, num_nodes={num_nodes}")
    return adj


def random_regular_graph(num_nodes: int, degree: int, seed: int | None = None) -> sp.csr_array:
    """Uniformly random ``degree``-regular graph."""
    if not 1 <= degree < num_nodes:
        raise ValueError(f"random_regular needs 1 <= degree < num_nodes, got degree={degree}, num_nodes={num_nodes}")
    if (num_nodes * degree) % 2:
        raise ValueError(f"random_regular needs num_nodes * degree even, got {num_nodes} * {degree}")
    import networkx as nx  # when drawn: networkx costs 0.06 s of every start-up

    return from_networkx(nx.random_regular_graph(degree, num_nodes, seed=seed))


def erdos_renyi_graph(num_nodes: int, p: float, seed: int | None = None) -> sp.csr_array:
    """G(N, p): every pair linked independently with probability ``p``."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"erdos_renyi needs 0 < p <= 1, got p={p}")
    import networkx as nx  # when drawn: networkx costs 0.06 s of every start-up

    return from_networkx(nx.fast_gnp_random_graph(num_nodes, p, seed=seed))


def watts_strogatz_graph(num_nodes: int, k: int, p: float, seed: int | None = None) -> sp.csr_array:
    """Small world: ring lattice with ``k`` nearest neighbours, each edge rewired with probability ``p``."""
    if not 2 <= k < num_nodes:
        raise ValueError(f"watts_strogatz needs 2 <= k < num_nodes, got k={k}, num_nodes={num_nodes}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"watts_strogatz needs 0 <= p <= 1, got p={p}")
    import networkx as nx  # when drawn: networkx costs 0.06 s of every start-up

    return from_networkx(nx.watts_strogatz_graph(num_nodes, k, p, seed=seed))


def barabasi_albert_graph(num_nodes: int, m: int, seed: int | None = None) -> sp.csr_array:
    """Preferential attachment: each new node links to ``m`` existing nodes."""
    if not 1 <= m < num_nodes:
        raise ValueError(f"barabasi_albert needs 1 <= m < num_nodes, got m={m}, num_nodes={num_nodes}")
    import networkx as nx  # when drawn: networkx costs 0.06 s of every start-up

    return from_networkx(nx.barabasi_albert_graph(num_nodes, m, seed=seed))


# ---------------------------------------------------------------------------------------------
# Specs (topology.graph)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.spec import Capabilities  # noqa: E402
from peerlearn.topology.base import GRAPHS, GraphSpec  # noqa: E402

_RANDOM = Capabilities(random=True)


@GRAPHS.register
class RandomRegularSpec(GraphSpec):
    """A uniformly random degree-regular graph (seeded)."""

    name: Literal["random_regular"] = "random_regular"
    degree: int = Field(4, ge=1, description="degree of every node")
    factory: ClassVar = staticmethod(random_regular_graph)
    capabilities: ClassVar = _RANDOM

    def expected_edges(self, num_nodes: int) -> float:
        return num_nodes * self.degree / 2

    def check(self, cfg) -> None:
        n = cfg.num_nodes
        if self.degree >= n or (n * self.degree) % 2:
            raise config_error("topology.degree", f"random_regular needs degree < num_nodes and num_nodes * degree "
                                                  f"even; got degree={self.degree}, num_nodes={n}")


@GRAPHS.register
class ErdosRenyiSpec(GraphSpec):
    """G(N, p): every pair linked independently with probability p (Erdos & Renyi, 1959)."""

    name: Literal["erdos_renyi"] = "erdos_renyi"
    p: float = Field(0.1, ge=0.0, le=1.0, description="edge probability")
    factory: ClassVar = staticmethod(erdos_renyi_graph)
    capabilities: ClassVar = _RANDOM

    def expected_edges(self, num_nodes: int) -> float:
        return self.p * num_nodes * (num_nodes - 1) / 2


@GRAPHS.register
class WattsStrogatzSpec(GraphSpec):
    """Small world: a ring lattice with rewired edges (Watts & Strogatz, Nature 1998)."""

    name: Literal["watts_strogatz"] = "watts_strogatz"
    k: int = Field(4, ge=2, description="nearest neighbours in the ring lattice")
    p: float = Field(0.1, ge=0.0, le=1.0, description="rewiring probability")
    factory: ClassVar = staticmethod(watts_strogatz_graph)
    capabilities: ClassVar = _RANDOM

    def expected_edges(self, num_nodes: int) -> float:
        return num_nodes * self.k / 2

    def check(self, cfg) -> None:
        if self.k >= cfg.num_nodes:
            raise config_error("topology.k", f"must be < num_nodes={cfg.num_nodes}, got {self.k}")


@GRAPHS.register
class BarabasiAlbertSpec(GraphSpec):
    """Preferential attachment, a scale-free graph with hubs (Barabasi & Albert, Science 1999)."""

    name: Literal["barabasi_albert"] = "barabasi_albert"
    m: int = Field(2, ge=1, description="edges of each new node")
    factory: ClassVar = staticmethod(barabasi_albert_graph)
    capabilities: ClassVar = _RANDOM

    def expected_edges(self, num_nodes: int) -> float:
        return num_nodes * self.m

    def check(self, cfg) -> None:
        if self.m >= cfg.num_nodes:
            raise config_error("topology.m", f"must be < num_nodes={cfg.num_nodes}, got {self.m}")


@GRAPHS.register
class FileGraphSpec(GraphSpec):
    """A user's graph: an edge-list file of 'u v' lines."""

    name: Literal["file"] = "file"
    path: str | None = Field(None, description="edge-list file ('u v' per line, ids 0..num_nodes-1)")

    def check(self, cfg) -> None:
        if not self.path:
            raise config_error("topology.path", "graph 'file' needs the path of an edge-list file")

    def build(self, num_nodes: int, seed: int):
        return read_edge_list(self.path, num_nodes, "topology.path")
