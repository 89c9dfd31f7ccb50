"""Mixing rules (adjacency -> doubly stochastic ``W_NN``) and the spectral gap.

References:
    Xiao & Boyd, "Fast linear iterations for distributed averaging", Systems & Control Letters 2004
    (Metropolis-Hastings and max-degree weights); Boyd et al., "Randomized gossip algorithms",
    IEEE Trans. Inf. Theory 2006 (spectral gap and averaging time).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from peerlearn.topology.clique import Clique, uniform_clique_weights
from peerlearn.topology.graphs import degrees


def _with_diagonal(off: sp.csr_array) -> sp.csr_array:
    """Add ``W_ii = 1 - sum_j W_ij`` so rows sum to one."""
    diag = 1.0 - np.asarray(off.sum(axis=1)).ravel()
    return sp.csr_array(off + sp.diags_array(diag, format="csr"))


def metropolis_hastings_weights(adj: sp.csr_array | Clique) -> sp.csr_array | Clique:
    """``W_ij = 1 / (1 + max(d_i, d_j))`` for neighbours; symmetric and doubly stochastic on any graph."""
    if isinstance(adj, Clique):
        return uniform_clique_weights(adj)
    deg = degrees(adj)
    coo = adj.tocoo()
    w = 1.0 / (1.0 + np.maximum(deg[coo.row], deg[coo.col]))
    return _with_diagonal(sp.csr_array((w, (coo.row, coo.col)), shape=adj.shape))


def max_degree_weights(adj: sp.csr_array | Clique) -> sp.csr_array | Clique:
    """``W_ij = 1 / (1 + d_max)`` for neighbours; symmetric and doubly stochastic on any graph."""
    if isinstance(adj, Clique):  # d_max = k - 1 on a clique of k members
        return uniform_clique_weights(adj)
    d_max = int(degrees(adj).max(initial=0))
    return _with_diagonal(sp.csr_array(adj * (1.0 / (1.0 + d_max))))


def uniform_weights(adj: sp.csr_array | Clique) -> sp.csr_array | Clique:
    """``W_ij = 1 / (1 + d_i)`` for ``j`` in ``N(i) + {i}``: equal weight to self and each neighbour.

    Doubly stochastic only on regular graphs, so an irregular graph is refused rather than
    silently drifting the network mean.
    """
    deg = degrees(adj)
    if deg.size and deg.min() != deg.max():
        raise ValueError(f"mixing 'uniform' is doubly stochastic only on regular graphs; this graph has "
                         f"degrees {deg.min()}..{deg.max()}: use metropolis_hastings or max_degree")
    if isinstance(adj, Clique):
        return uniform_clique_weights(adj)
    off = sp.csr_array(sp.diags_array(1.0 / (1.0 + deg)) @ adj)
    return _with_diagonal(off)


def second_largest_eigenvalue(W: sp.csr_array | Clique) -> float:
    """``lambda = max(|lambda_2|, |lambda_N|)`` of a symmetric stochastic W (the one eigenvalue 1 excluded)."""
    n = W.shape[0]
    if n == 1:
        return 0.0
    if isinstance(W, Clique):
        if W.num_members < n:  # the nodes outside the clique keep their models: eigenvalue 1 again
            return 1.0
        return abs(W.diag - W.off)  # W = (diag - off) I + off 11^T: eigenvalues 1 and diag - off
    if n <= 4096:
        eig = np.linalg.eigvalsh(W.toarray())
        return float(max(abs(eig[0]), abs(eig[-2])))
    top = spla.eigsh(W, k=2, which="LA", return_eigenvectors=False)
    bottom = spla.eigsh(W, k=1, which="SA", return_eigenvectors=False)
    return float(max(abs(np.sort(top)[0]), abs(bottom[0])))


def spectral_gap(W: sp.csr_array) -> float:
    """``1 - max(|lambda_2(W)|, |lambda_N(W)|)``: one gossip step shrinks disagreement by ``1 - gap``."""
    return 1.0 - second_largest_eigenvalue(W)


# ---------------------------------------------------------------------------------------------
# Specs (topology.mixing)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from peerlearn.spec import Capabilities  # noqa: E402
from peerlearn.topology.base import MIXING, MixingSpec  # noqa: E402


@MIXING.register
class MetropolisHastingsSpec(MixingSpec):
    """w_ij = 1 / (1 + max(d_i, d_j)): doubly stochastic on any graph (Xiao & Boyd, 2004)."""

    name: Literal["metropolis_hastings"] = "metropolis_hastings"
    factory: ClassVar = staticmethod(metropolis_hastings_weights)
    takes_cliques: ClassVar = True


@MIXING.register
class MaxDegreeSpec(MixingSpec):
    """w_ij = 1 / (1 + max degree): doubly stochastic on any graph."""

    name: Literal["max_degree"] = "max_degree"
    factory: ClassVar = staticmethod(max_degree_weights)
    takes_cliques: ClassVar = True


@MIXING.register
class UniformSpec(MixingSpec):
    """w_ij = 1 / (1 + d): a regular graph's uniform weights."""

    name: Literal["uniform"] = "uniform"
    factory: ClassVar = staticmethod(uniform_weights)
    takes_cliques: ClassVar = True
    capabilities: ClassVar = Capabilities(regular_only=True)
