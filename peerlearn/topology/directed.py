"""Directed graphs and column-stochastic weights, for push-sum / Stochastic Gradient Push.

A directed adjacency ``A_NN`` has ``A[i, j] = 1`` when ``j`` sends to ``i`` (rows receive,
columns send, as in ``W``). Column-stochastic weights conserve the total mass ``sum_i x_i``
but not the average of a row-stochastic update, which is why push-sum carries a weight.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from peerlearn.topology.clique import Clique, uniform_clique_weights


def _directed(num_nodes: int, src: np.ndarray, dst: np.ndarray) -> sp.csr_array:
    keep = src != dst
    adj = sp.csr_array((np.ones(int(keep.sum())), (dst[keep], src[keep])), shape=(num_nodes, num_nodes))
    adj.sum_duplicates()
    adj.data[:] = 1.0
    return adj


def directed_cycle_graph(num_nodes: int) -> sp.csr_array:
    """Directed ring: node ``i`` sends only to ``i + 1 (mod N)``."""
    if num_nodes < 2:
        raise ValueError(f"num_nodes must be >= 2 for a directed ring, got {num_nodes}")
    i = np.arange(num_nodes)
    return _directed(num_nodes, i, (i + 1) % num_nodes)


def directed_exponential_graph(num_nodes: int) -> sp.csr_array:
    """Node ``i`` sends to ``i + 2^k (mod N)`` for every ``2^k < N`` (out-degree ``ceil(log2 N)``).

    References:
        Assran et al., "Stochastic Gradient Push for Distributed Deep Learning", ICML 2019.
    """
    if num_nodes < 2:
        raise ValueError(f"num_nodes must be >= 2, got {num_nodes}")
    i = np.arange(num_nodes)
    hops = [1 << k for k in range(int(np.ceil(np.log2(num_nodes))))]
    return _directed(num_nodes, np.concatenate([i] * len(hops)), np.concatenate([(i + h) % num_nodes for h in hops]))


def is_strongly_connected(adj: sp.csr_array) -> bool:
    return connected_components(adj, directed=True, connection="strong", return_labels=False) == 1


def column_stochastic_weights(adj: sp.csr_array) -> sp.csr_array:
    """``P_ij = 1 / (1 + outdeg_j)`` for ``j -> i`` and ``P_jj`` the same: each sender splits its mass
    equally between itself and its out-neighbours, so every column sums to one.

    On an undirected graph this is column-stochastic but not row-stochastic unless the graph is regular.
    """
    if isinstance(adj, Clique):  # out-degree k - 1 in a clique of k: each member keeps and sends 1/k
        return uniform_clique_weights(adj)
    out_deg = np.asarray(adj.sum(axis=0)).ravel()
    share = 1.0 / (1.0 + out_deg)
    return sp.csr_array(adj @ sp.diags_array(share) + sp.diags_array(share))


# ---------------------------------------------------------------------------------------------
# Specs (topology.graph, topology.mixing)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from peerlearn.spec import Capabilities  # noqa: E402
from peerlearn.topology.base import GRAPHS, MIXING, GraphSpec, MixingSpec  # noqa: E402


@GRAPHS.register
class DirectedRingSpec(GraphSpec):
    """A directed cycle: node i sends to i+1 only."""

    name: Literal["directed_ring"] = "directed_ring"
    factory: ClassVar = staticmethod(directed_cycle_graph)
    capabilities: ClassVar = Capabilities(directed=True)


@GRAPHS.register
class DirectedExponentialSpec(GraphSpec):
    """Directed exponential graph: node i sends to i + 2^k (Assran et al., ICML 2019)."""

    name: Literal["directed_exponential"] = "directed_exponential"
    factory: ClassVar = staticmethod(directed_exponential_graph)
    capabilities: ClassVar = Capabilities(directed=True)


@MIXING.register
class ColumnStochasticSpec(MixingSpec):
    """Each sender splits its mass equally over itself and its out-neighbours (push-sum weights)."""

    name: Literal["column_stochastic"] = "column_stochastic"
    factory: ClassVar = staticmethod(column_stochastic_weights)
    takes_cliques: ClassVar = True
    capabilities: ClassVar = Capabilities(column_stochastic=True)
