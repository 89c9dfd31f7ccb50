"""Where chosen nodes sit on the graph (Byzantine nodes, relays, crashed nodes):
``place_nodes(adj, count, how, seed, pool_N) -> mask_N``."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order

from peerlearn.topology.clique import as_csr
from peerlearn.topology.graphs import degrees


def place_nodes(adj: sp.csr_array, count: int, how: str = "random", seed: int = 0,
                pool_N: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of ``count`` nodes chosen among ``pool_N`` (default: all nodes).

    - ``random``: uniformly at random;
    - ``degree``: the highest-degree nodes (hubs; ties broken at random);
    - ``cluster``: a connected ball grown breadth-first from a random node (whole graph only).
    """
    n = adj.shape[0]
    rng = np.random.default_rng(seed)
    pool = np.arange(n) if pool_N is None else np.flatnonzero(pool_N)
    if how == "random":
        chosen = rng.choice(pool, size=count, replace=False)
    elif how == "degree":
        chosen = pool[np.lexsort((rng.random(len(pool)), -degrees(adj)[pool]))[:count]]
    elif how == "cluster" and pool_N is None:
        chosen = breadth_first_order(as_csr(adj), int(rng.integers(n)), directed=False, return_predecessors=False)[:count]
    else:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {how!r}")
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return mask


def place_byzantine(adj: sp.csr_array, count: int, how: str = "random", seed: int = 0) -> np.ndarray:
    """Boolean mask of ``count`` Byzantine nodes, placed by :func:`place_nodes`."""
    n = adj.shape[0]
    if not 0 <= count < n:
        raise ValueError(f"threat.num_byzantine must be in [0, num_nodes), got {count} with num_nodes={n}")
    if how not in PLACEMENTS:
        raise ValueError(f"threat.placement must be one of {', '.join(PLACEMENTS)}, got {how!r}")
    return place_nodes(adj, count, how, seed)



PLACEMENTS = ("random", "degree", "cluster")
PLACE_BY = {"hubs": "degree", "random": "random"}  # the config's words (relays, crashes) -> place_nodes' how
