"""Faults as input: which nodes are up and which links carry messages in each round.

The engine applies a :class:`FaultPlan` to every round's topology before the algorithm runs;
algorithms never see faults, only the surviving graph:

- a down node neither trains nor communicates: its edges are removed, its row of ``params_NP``
  and of the algorithm state is kept as it was (frozen), and collective primitives (all-reduce,
  server averages, multicasts) skip it;
- the mixing weights are recomputed on the surviving graph with the run's mixing rule, so they
  stay valid (Metropolis-Hastings weights stay doubly stochastic over the alive nodes);
- a node that comes back (recovery, churn, late join) resumes from its stale model or, by
  default, from an alive neighbour's model.

Which nodes are up is decided once, at construction, for every round (crashes, churn, late
joins); link failures, message loss and partitions are drawn from ``(seed, round)``. So the
plan is a pure function of the round: a resumed run sees the same faults.

References:
    Palmieri et al., "Exploring the Impact of Disrupted Peer-to-Peer Communications on Fully
    Decentralized Learning in Disaster Scenarios", ICT-DM 2023 (node and link loss).
    Kong et al., "Consensus Control for Decentralized Deep Learning", ICML 2021, and Koloskova
    et al., "A Unified Theory of Decentralized SGD with Changing Topology", ICML 2020 (random
    link failures as a time-varying topology; the expected spectral gap sets the rate).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

from peerlearn.device import from_host
from peerlearn.topology.clique import Clique, as_csr
from peerlearn.types import Tensor


@dataclass(frozen=True)
class RoundFaults:
    """What the faults leave of one round: alive nodes, the surviving mixing matrix, and who (re)joined."""

    alive_N: Tensor  # bool
    W: sp.csr_array
    joined: np.ndarray  # indices of nodes that are up this round but were down the round before


def alive_timeline(num_nodes: int, num_rounds: int, *, crash_N: np.ndarray | None = None, crash_round: int = 1,
                   recover_round: int | None = None, churn_leave: float = 0.0, churn_join: float = 0.0,
                   late_N: np.ndarray | None = None, join_round: int = 1, seed: int = 0) -> np.ndarray:
    """``alive_TN[t, i]``: node i is up in round t (row 0 is the start, before round 1).

    - crash: the nodes in ``crash_N`` go down at ``crash_round`` and, if ``recover_round`` is set,
      come back then;
    - churn: every round each up node leaves with probability ``churn_leave`` and each node that
      left comes back with probability ``churn_join`` (a two-state Markov chain per node);
    - late joiners: the nodes in ``late_N`` are down until ``join_round``.
    """
    t = np.arange(num_rounds + 1)[:, None]
    alive = np.ones((num_rounds + 1, num_nodes), dtype=bool)
    if crash_N is not None:
        down = (t >= crash_round) & (True if recover_round is None else t < recover_round)
        alive &= ~(down & crash_N[None, :])
    if late_N is not None:
        alive &= ~((t < join_round) & late_N[None, :])
    if churn_leave > 0:
        rng = np.random.default_rng(seed)
        up = np.ones(num_nodes, dtype=bool)
        for r in range(1, num_rounds + 1):
            u = rng.random(num_nodes)
            up = np.where(up, u >= churn_leave, u < churn_join)
            alive[r] &= up
    return alive


def contiguous_groups(num_nodes: int, num_groups: int) -> np.ndarray:
    """Group of each node: ``num_groups`` blocks of consecutive ids (arcs of a ring, bands of a torus)."""
    groups = np.empty(num_nodes, dtype=np.int64)
    for g, block in enumerate(np.array_split(np.arange(num_nodes), num_groups)):
        groups[block] = g
    return groups


class FaultPlan:
    """The faults of a run, applied by the engine to each round's mixing matrix.

    Args:
        alive_TN: from :func:`alive_timeline`.
        mixing: the run's mixing rule, ``adjacency -> W``, re-run on each round's surviving graph.
        link_failure: probability that an undirected link is down in a round (independently).
        message_loss: probability that one directed message is lost; the receiver keeps the lost
            weight on its own model (rows stay stochastic; the network mean is no longer preserved).
        groups_N, partition_rounds: links between different groups are cut for rounds in
            ``[start, end)`` (a network partition that heals at ``end``).
        rejoin: ``neighbour`` (a returning node copies an alive neighbour's model) or ``stale``.
    """

    def __init__(self, alive_TN: np.ndarray, mixing: Callable[[sp.csr_array], sp.csr_array], *,
                 link_failure: float = 0.0, message_loss: float = 0.0, groups_N: np.ndarray | None = None,
                 partition_rounds: tuple[int, int] = (0, 0), rejoin: str = "neighbour", seed: int = 0):
        if rejoin not in ("neighbour", "stale"):
            raise ValueError(f"faults.rejoin must be neighbour or stale, got {rejoin!r}")
        self.alive_TN, self.mixing = alive_TN, mixing
        self.link_failure, self.message_loss = link_failure, message_loss
        self.groups_N, self.partition_rounds = groups_N, partition_rounds
        self.rejoin, self.seed = rejoin, seed
        self._cache = (None, None, None)  # (base W, (alive set, partitioned), mixed W): see _mixed

    def alive(self, round_: int) -> np.ndarray:
        return self.alive_TN[min(round_, len(self.alive_TN) - 1)]

    def surviving_adjacency(self, adj: sp.csr_array | Clique, round_: int) -> sp.csr_array | Clique:
        """``adj`` without the links of down nodes, failed links and links across a partition."""
        start, end = self.partition_rounds
        partitioned = self.groups_N is not None and start <= round_ < end
        if isinstance(adj, Clique) and self.link_failure == 0 and not partitioned:
            # a clique that loses nodes is a clique among the survivors (O(N), never N^2 links)
            alive = self.alive(round_) & adj.member_mask()
            return Clique(adj.num_nodes, np.flatnonzero(alive))
        coo = sp.coo_array(as_csr(adj))
        row, col = coo.row, coo.col
        alive = self.alive(round_)
        keep = alive[row] & alive[col] & (row != col) & (coo.data != 0)
        if partitioned:
            keep &= self.groups_N[row] == self.groups_N[col]
        adj = sp.csr_array((np.ones(int(keep.sum())), (row[keep], col[keep])), shape=adj.shape)
        if self.link_failure > 0:
            adj = self._fail_links(adj, round_)
        return adj

    def _fail_links(self, adj: sp.csr_array, round_: int) -> sp.csr_array:
        """Each link is down with probability ``link_failure``: one coin per undirected link (both
        directions fail together), one per directed edge on a directed graph."""
        rng = np.random.default_rng([self.seed, round_, 0])
        symmetric = (adj != adj.T).nnz == 0
        edges = sp.coo_array(sp.triu(adj, k=1) if symmetric else adj)
        up = rng.random(edges.nnz) >= self.link_failure
        kept = sp.csr_array((np.ones(int(up.sum())), (edges.row[up], edges.col[up])), shape=adj.shape)
        return sp.csr_array(kept + kept.T) if symmetric else kept

    def at(self, round_: int, base_W: sp.csr_array) -> RoundFaults:
        """The round's alive mask and mixing matrix, from the fault-free ``base_W`` of that round."""
        W = self._mixed(base_W, round_)
        if self.message_loss > 0:
            W = self._lose_messages(W, round_)
        alive = self.alive(round_)
        before = self.alive(round_ - 1) if round_ > 0 else alive
        return RoundFaults(from_host(alive.copy()), W, np.flatnonzero(alive & ~before))  # on the run's device

    def with_departures(self, gone_TN: np.ndarray) -> FaultPlan:
        """This plan with the nodes of ``gone_TN`` down as well (ranks that left a distributed run)."""
        plan = copy.copy(self)
        plan.alive_TN, plan._cache = self.alive_TN & ~gone_TN[:len(self.alive_TN)], (None, None, None)
        return plan

    def _mixed(self, base_W, round_: int):
        """The mixing rule on the surviving graph; without link failures, the same matrix (the same object:
        an engine plans its exchanges once) while the base, the alive set and the partition stay."""
        start, end = self.partition_rounds
        key = (self.alive(round_).tobytes(), self.groups_N is not None and start <= round_ < end)
        if self.link_failure == 0 and self._cache[0] is base_W and self._cache[1] == key:
            return self._cache[2]
        W = self.mixing(self.surviving_adjacency(base_W, round_))
        self._cache = (base_W, key, W)
        return W

    def _lose_messages(self, W: sp.csr_array | Clique, round_: int) -> sp.csr_array:
        coo = sp.coo_array(as_csr(W))
        off = coo.row != coo.col
        lost = off & (np.random.default_rng([self.seed, round_, 2]).random(len(coo.data)) < self.message_loss)
        data = np.where(lost, 0.0, coo.data)
        kept = sp.csr_array((data, (coo.row, coo.col)), shape=W.shape)
        kept.eliminate_zeros()
        refill = np.bincount(coo.row[lost], weights=coo.data[lost], minlength=W.shape[0]).astype(coo.data.dtype)
        return sp.csr_array(kept + sp.diags_array(refill, format="csr"))

    def rejoin_sources(self, joined: np.ndarray, adj: sp.csr_array, alive_N: np.ndarray,
                       round_: int) -> tuple[np.ndarray, np.ndarray]:
        """(joiners, the alive neighbour each copies), for ``rejoin=neighbour``; joiners without an
        alive neighbour that was up before keep their own model."""
        if self.rejoin == "stale" or len(joined) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        rng = np.random.default_rng([self.seed, round_, 3])
        was_up = self.alive(round_ - 1) & alive_N
        dst, src = [], []
        clique = adj.member_mask() if isinstance(adj, Clique) else None
        for i in joined:
            if clique is not None:  # a clique member's neighbours are the other members
                nbrs = np.flatnonzero(clique) if clique[i] else np.empty(0, dtype=np.int64)
                nbrs = nbrs[nbrs != i]
            else:
                nbrs = adj.indices[adj.indptr[i]:adj.indptr[i + 1]]
            nbrs = nbrs[was_up[nbrs]]
            if len(nbrs):
                dst.append(i)
                src.append(int(rng.choice(nbrs)))
        return np.asarray(dst, dtype=np.int64), np.asarray(src, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Spec (the faults: section)
# ---------------------------------------------------------------------------------------------
from typing import Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.spec import GraphContext, Spec, config_error  # noqa: E402


class FaultsSpec(Spec):
    """Node crashes, churn, late joins, link failures, message loss and partitions, drawn once per run.

    References: Palmieri et al., ICT-DM 2023 (node and link loss); Koloskova et al., ICML 2020 (link
    failures as a time-varying topology).
    """

    crash_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of nodes that crash")
    crash_round: int = Field(1, ge=1, description="round at which they crash")
    recover_round: int | None = Field(None, ge=2, description="round at which crashed nodes come back (none: never)")
    crash_placement: Literal["random", "hubs"] = Field("random", description="which nodes crash: random, or the "
                                                       "highest-degree ones")
    crash_among: Literal["all", "data", "relays"] = Field("all", description="crash only nodes that hold data, or "
                                                          "only relay nodes (data.relay_fraction)")
    churn_leave: float = Field(0.0, ge=0.0, le=1.0, description="churn: probability that an up node leaves in a round")
    churn_join: float = Field(0.0, ge=0.0, le=1.0, description="churn: probability that a node that left comes back "
                              "in a round")
    late_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of nodes that join late")
    join_round: int = Field(1, ge=1, description="round at which late joiners join")
    rejoin: Literal["neighbour", "stale"] = Field("neighbour", description="a node that comes back starts from an "
                                                  "alive neighbour's model, or from its own stale one")
    link_failure: float = Field(0.0, ge=0.0, lt=1.0, description="probability that a link is down in a round")
    message_loss: float = Field(0.0, ge=0.0, lt=1.0, description="probability that one gossip message is lost")
    partition_groups: int = Field(1, ge=1, description="split the network into this many groups of consecutive "
                                  "ids (1: no partition)")
    partition_round: int = Field(1, ge=1, description="round at which the partition starts")
    heal_round: int | None = Field(None, ge=2, description="round at which the partition heals (none: never)")

    @property
    def active(self) -> bool:
        return bool(self.crash_fraction or self.churn_leave or self.late_fraction or self.link_failure
                    or self.message_loss or self.partition_groups > 1)

    def check(self, cfg) -> None:
        if self.recover_round is not None and self.recover_round <= self.crash_round:
            raise config_error("faults.recover_round", f"must be after crash_round={self.crash_round}, "
                                                       f"got {self.recover_round}")
        if self.heal_round is not None and self.heal_round <= self.partition_round:
            raise config_error("faults.heal_round", f"must be after partition_round={self.partition_round}, "
                                                    f"got {self.heal_round}")
        if self.partition_groups > cfg.num_nodes:
            raise config_error("faults.partition_groups", f"at most num_nodes={cfg.num_nodes}, "
                                                          f"got {self.partition_groups}")
        if self.churn_join and not self.churn_leave:
            raise config_error("faults.churn_join", "nodes only come back after leaving; set faults.churn_leave")
        if self.crash_among == "relays" and not cfg.data.relay_fraction:
            raise config_error("faults.crash_among", "relays needs relay nodes; set data.relay_fraction")
        if self.active and cfg.topology.mixing.capabilities.regular_only:
            raise config_error("topology.mixing", f"{cfg.topology.mixing.name} weights need a regular graph, which "
                                                  "faults break; use metropolis_hastings or max_degree")

    def build(self, ctx: GraphContext) -> FaultPlan | None:
        """The run's :class:`FaultPlan` on ``ctx``'s graph, relays and mixing rule, or None without faults."""
        from peerlearn.attacks.placement import PLACE_BY, place_nodes

        if not self.active:
            return None
        n, adj = ctx.num_nodes, ctx.adjacency
        relay = np.zeros(n, dtype=bool) if ctx.relay_N is None else ctx.relay_N
        pool = {"all": np.ones(n, dtype=bool), "data": ~relay, "relays": relay}[self.crash_among]
        crash = place_nodes(adj, int(round(self.crash_fraction * pool.sum())), PLACE_BY[self.crash_placement],
                            ctx.seed("crash"), pool_N=pool)
        late = place_nodes(adj, int(round(self.late_fraction * n)), "random", ctx.seed("late"))
        alive = alive_timeline(n, ctx.num_rounds, crash_N=crash, crash_round=self.crash_round,
                               recover_round=self.recover_round, churn_leave=self.churn_leave,
                               churn_join=self.churn_join, late_N=late, join_round=self.join_round,
                               seed=ctx.seed("churn"))
        groups = contiguous_groups(n, self.partition_groups) if self.partition_groups > 1 else None
        heal = self.heal_round if self.heal_round is not None else ctx.num_rounds + 1
        return FaultPlan(alive, ctx.mixing, link_failure=self.link_failure, message_loss=self.message_loss,
                         groups_N=groups, partition_rounds=(self.partition_round, heal), rejoin=self.rejoin,
                         seed=ctx.seed("faults"))
