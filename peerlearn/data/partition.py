"""Split a labelled training set across nodes: each function returns one index array per node.

Every partition is seeded and gives every node at least ``min_size`` samples, or raises.
"""

from __future__ import annotations

import numpy as np


def _check(parts: list[np.ndarray], min_size: int, what: str) -> list[np.ndarray]:
    small = min(len(p) for p in parts)
    if small < min_size:
        raise ValueError(f"data.partition={what}: a node got {small} samples (< {min_size}); "
                         "use fewer nodes or a less extreme setting")
    return [np.sort(p) for p in parts]


def iid(labels: np.ndarray, num_nodes: int, seed: int = 0, min_size: int = 1) -> list[np.ndarray]:
    """Uniform random split into near-equal parts."""
    rng = np.random.default_rng(seed)
    return _check(np.array_split(rng.permutation(len(labels)), num_nodes), min_size, "iid")


def dirichlet(labels: np.ndarray, num_nodes: int, alpha: float, seed: int = 0, min_size: int = 2,
              max_tries: int = 100) -> list[np.ndarray]:
    """Label skew: for each class draw ``p ~ Dir(alpha * 1_N)`` and split that class by ``p``.

    Redraws (up to ``max_tries``) until every node has ``min_size`` samples, and stops
    filling a node past ``len(labels) / num_nodes`` as decentralizepy does.

    References:
        Hsu, Qi & Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated
        Visual Classification", arXiv:1909.06335, 2019.
    """
    if alpha <= 0:
        raise ValueError(f"data.alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    cap = len(labels) / num_nodes
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_nodes)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(num_nodes, alpha))
            p = p * np.array([len(q) < cap for q in parts])
            p = p / p.sum() if p.sum() > 0 else np.full(num_nodes, 1.0 / num_nodes)
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            for q, chunk in zip(parts, np.split(idx, cuts)):
                q.extend(chunk.tolist())
        if min(len(q) for q in parts) >= min_size:
            return _check([np.asarray(q, dtype=np.int64) for q in parts], min_size, "dirichlet")
    raise ValueError(f"data.partition=dirichlet: no split with >= {min_size} samples per node after "
                     f"{max_tries} draws (alpha={alpha}, num_nodes={num_nodes}); raise data.alpha or use fewer nodes")


def shards(labels: np.ndarray, num_nodes: int, classes_per_node: int, seed: int = 0,
           min_size: int = 1) -> list[np.ndarray]:
    """Pathological split: sort by label, cut into ``num_nodes * classes_per_node`` shards, deal them out.

    References:
        McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
        Data", AISTATS 2017 (two shards of sorted MNIST per client).
    """
    if classes_per_node < 1:
        raise ValueError(f"data.classes_per_node must be >= 1, got {classes_per_node}")
    if num_nodes * classes_per_node > len(labels):
        raise ValueError(f"data.classes_per_node: {num_nodes} nodes x {classes_per_node} shards each is more than "
                         f"the {len(labels)} training samples")
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(labels)), labels))
    pieces = np.array_split(order, num_nodes * classes_per_node)
    deal = rng.permutation(len(pieces)).reshape(num_nodes, classes_per_node)
    return _check([np.concatenate([pieces[k] for k in row]) for row in deal], min_size, "shards")


def clusters(labels: np.ndarray, num_nodes: int, num_clusters: int, seed: int = 0,
             min_size: int = 1) -> list[np.ndarray]:
    """A planted cluster structure: the classes are dealt into ``num_clusters`` disjoint label sets, node i
    belongs to cluster ``i mod num_clusters``, and each cluster's samples are split at random among its nodes.
    Nodes of one cluster share a task; nodes of different clusters share no class (what a learned cooperation
    graph should find, SCooL's planted-partition setting).

    References:
        Li, Zhou, Tian & Tao, "Structured Cooperative Learning with Graphical Model Priors", ICML 2023 (its
        non-iid SBM setting: clients in groups with their own label sets).
    """
    classes = np.unique(labels)
    if not 1 <= num_clusters <= min(len(classes), num_nodes):
        raise ValueError(f"data.num_clusters must be between 1 and min(classes={len(classes)}, "
                         f"num_nodes={num_nodes}), got {num_clusters}")
    rng = np.random.default_rng(seed)
    label_sets = np.array_split(rng.permutation(classes), num_clusters)  # what cluster_label_sets gives
    parts: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * num_nodes
    for c, label_set in enumerate(label_sets):
        members = np.arange(c, num_nodes, num_clusters)
        samples = rng.permutation(np.flatnonzero(np.isin(labels, label_set)))
        for node, piece in zip(members, np.array_split(samples, len(members))):
            parts[node] = np.sort(piece)
    return _check(parts, min_size, "clusters")


def cluster_of(num_nodes: int, num_clusters: int) -> np.ndarray:
    """Each node's cluster under :func:`clusters`."""
    return np.arange(num_nodes) % num_clusters


def cluster_label_sets(labels: np.ndarray, num_clusters: int, seed: int) -> list[np.ndarray]:
    """The label set of each cluster :func:`clusters` draws with ``seed`` (the partition's seed stream)."""
    return np.array_split(np.random.default_rng(seed).permutation(np.unique(labels)), num_clusters)


def quantity_skew(labels: np.ndarray, num_nodes: int, alpha: float, seed: int = 0,
                  min_size: int = 2) -> list[np.ndarray]:
    """Size skew with IID labels: node shares ``q ~ Dir(alpha * 1_N)``, at least ``min_size`` each."""
    if alpha <= 0:
        raise ValueError(f"data.alpha must be > 0, got {alpha}")
    n = len(labels)
    if n < num_nodes * min_size:
        raise ValueError(f"data.partition=quantity_skew: {n} samples cannot give {num_nodes} nodes {min_size} each")
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.full(num_nodes, alpha))
    extra = np.floor(q * (n - num_nodes * min_size)).astype(int)
    sizes = extra + min_size
    sizes[: n - sizes.sum()] += 1  # hand out the rounding remainder
    return _check(np.split(rng.permutation(n), np.cumsum(sizes)[:-1]), min_size, "quantity_skew")


def natural(groups: np.ndarray, num_nodes: int, seed: int = 0, min_size: int = 1) -> list[np.ndarray]:
    """One node per natural group (Shakespeare: per speaking role), as the LEAF benchmark splits.

    ``groups[i]`` is sample i's group, -1 for samples no node may hold. Groups with fewer than
    ``min_size`` samples are dropped, and ``num_nodes`` of the rest are drawn at random (seeded),
    so node sizes keep their natural, heavy-tailed spread.

    References:
        Caldas et al., "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097, 2018.
    """
    groups = np.asarray(groups)
    order = np.argsort(groups, kind="stable")
    ids, first, counts = np.unique(groups[order], return_index=True, return_counts=True)
    eligible = np.flatnonzero((ids >= 0) & (counts >= min_size))
    if len(eligible) < num_nodes:
        raise ValueError(f"data.partition=natural: only {len(eligible)} groups have >= {min_size} samples; "
                         f"num_nodes={num_nodes} needs one each (use fewer nodes or a smaller "
                         "data.min_samples_per_node)")
    chosen = np.sort(np.random.default_rng(seed).choice(eligible, num_nodes, replace=False))
    return _check([order[first[k]:first[k] + counts[k]] for k in chosen], min_size, "natural")


# ---------------------------------------------------------------------------------------------
# Specs (data.partition): build(labels, num_nodes, seed, min_size); natural gets the groups as labels
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.data.base import PARTITIONS, PartitionSpec  # noqa: E402
from peerlearn.spec import Capabilities  # noqa: E402


class _Plain(PartitionSpec):
    factory: ClassVar

    def build(self, labels, num_nodes, seed, min_size):
        return type(self).factory(labels, num_nodes, seed=seed, min_size=min_size, **self.kwargs())


@PARTITIONS.register
class IidSpec(_Plain):
    """Uniform random split into near-equal parts."""

    name: Literal["iid"] = "iid"
    factory: ClassVar = staticmethod(iid)


@PARTITIONS.register
class DirichletSpec(_Plain):
    """Label skew: each class split by p ~ Dir(alpha) (Hsu et al., arXiv:1909.06335, 2019)."""

    name: Literal["dirichlet"] = "dirichlet"
    alpha: float = Field(1.0, gt=0.0, description="Dirichlet concentration; small = skewed")
    factory: ClassVar = staticmethod(dirichlet)


@PARTITIONS.register
class ShardsSpec(_Plain):
    """Pathological label skew: each node holds shards of a few classes (McMahan et al., AISTATS 2017)."""

    name: Literal["shards"] = "shards"
    classes_per_node: int = Field(2, ge=1, le=100_000, description="classes per node")
    factory: ClassVar = staticmethod(shards)


@PARTITIONS.register
class ClustersSpec(_Plain):
    """A planted cluster structure: nodes in groups, each group with its own disjoint label set (SCooL's
    planted-partition setting, Li et al., ICML 2023)."""

    name: Literal["clusters"] = "clusters"
    num_clusters: int = Field(2, ge=1, le=100_000, description="groups of nodes, each with its own label set "
                                                                "(node i in group i mod num_clusters)")
    factory: ClassVar = staticmethod(clusters)


@PARTITIONS.register
class QuantitySkewSpec(_Plain):
    """Quantity skew: node sizes ~ Dir(alpha), labels iid (Li et al., ICDE 2022)."""

    name: Literal["quantity_skew"] = "quantity_skew"
    alpha: float = Field(1.0, gt=0.0, description="Dirichlet concentration of node sizes; small = skewed")
    factory: ClassVar = staticmethod(quantity_skew)


@PARTITIONS.register
class NaturalSpec(_Plain):
    """One node per natural group of the dataset (LEAF; Shakespeare's speaking roles)."""

    name: Literal["natural"] = "natural"
    factory: ClassVar = staticmethod(natural)
    capabilities: ClassVar = Capabilities(needs_groups=True)
