"""Where Byzantine nodes sit on the graph: ``place_byzantine(adj, count, how, seed) -> mask_N``."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order


def place_byzantine(adj: sp.csr_array, count: int, how: str = "random", seed: int = 0) -> np.ndarray:
    """Boolean mask of ``count`` Byzantine nodes.

    - ``random``: uniformly at random;
    - ``degree``: the highest-degree nodes (hubs; ties broken at random);
    - ``cluster``: a connected ball grown breadth-first from a random node.
    """
    n = adj.shape[0]
    if not 0 <= count < n:
        raise ValueError(f"threat.num_byzantine must be in [0, num_nodes), got {count} with num_nodes={n}")
    rng = np.random.default_rng(seed)
    if how == "random":
        chosen = rng.choice(n, size=count, replace=False)
    elif how == "degree":
        chosen = np.lexsort((rng.random(n), -np.diff(adj.indptr)))[:count]
    elif how == "cluster":
        chosen = breadth_first_order(adj, int(rng.integers(n)), directed=False, return_predecessors=False)[:count]
    else:
        raise ValueError(f"threat.placement must be one of {', '.join(PLACEMENTS)}, got {how!r}")
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return mask


PLACEMENTS = ("random", "degree", "cluster")
