"""Time-varying topologies: ``schedule(round) -> W_NN`` (rounds count from 1).

Each schedule is a pure function of the round (and its seed), so a run can resume at any round
and two engines agree on every round's graph.

References:
    Koloskova et al., "A Unified Theory of Decentralized SGD with Changing Topology and Local Updates",
    ICML 2020 (time-varying W); Ying et al., "Exponential Graph is Provably Efficient for Decentralized
    Deep Training", NeurIPS 2021 (one-peer exponential); Boyd et al., "Randomized Gossip Algorithms",
    IEEE Trans. Inf. Theory 2006 (random matchings).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from peerlearn.topology.clique import Clique, uniform_clique_weights

Schedule = Callable[[int], "sp.csr_array | Clique"]


def _round_rng(seed: int, round_: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, round_]))


def constant_schedule(W: sp.csr_array) -> Schedule:
    """The same mixing matrix every round."""
    return lambda round_: W


def pairwise_average(num_nodes: int, src: np.ndarray, dst: np.ndarray) -> sp.csr_array:
    """``W`` where each pair ``(src_k, dst_k)`` averages (weights 1/2); other nodes keep their model.

    Doubly stochastic when the pairs are disjoint (a matching).
    """
    rows = np.concatenate([src, dst, src, dst])
    cols = np.concatenate([dst, src, src, dst])
    W = sp.csr_array((np.full(len(rows), 0.5), (rows, cols)), shape=(num_nodes, num_nodes))
    alone = np.setdiff1d(np.arange(num_nodes), np.concatenate([src, dst]))
    return sp.csr_array(W + sp.csr_array((np.ones(len(alone)), (alone, alone)), shape=W.shape))


def random_matching_schedule(num_nodes: int, seed: int = 0) -> Schedule:
    """A fresh uniformly random perfect matching each round (one node idles when N is odd)."""

    def schedule(round_: int) -> sp.csr_array:
        perm = _round_rng(seed, round_).permutation(num_nodes)
        half = num_nodes // 2
        return pairwise_average(num_nodes, perm[:half], perm[half:2 * half])

    return schedule


def one_peer_exponential_schedule(num_nodes: int) -> Schedule:
    """Round t: node i sends to ``i + 2^(t mod log2 N)`` and averages with what it receives.

    ``W_t = (I + S_t) / 2`` with ``S_t`` a cyclic shift: doubly stochastic, one message per node
    per round. For N a power of two the product of ``log2 N`` consecutive rounds is exactly the
    uniform average.
    """
    tau = max(1, int(np.ceil(np.log2(num_nodes))))
    i = np.arange(num_nodes)

    def schedule(round_: int) -> sp.csr_array:
        hop = 1 << ((round_ - 1) % tau)
        sender = (i - hop) % num_nodes  # row i receives from i - hop
        W = sp.csr_array((np.full(num_nodes, 0.5), (i, sender)), shape=(num_nodes, num_nodes))
        return sp.csr_array(W + sp.diags_array(np.full(num_nodes, 0.5)))

    return schedule


def resampled_schedule(make_graph: Callable[[int], sp.csr_array], mixing: Callable[[sp.csr_array], sp.csr_array],
                       seed: int = 0, every: int = 1) -> Schedule:
    """A new random graph every ``every`` rounds: ``make_graph(period_seed)`` then ``mixing`` (e.g. epidemic
    learning with a fresh random regular graph per round; ``every > 1``: a slowly time-varying network).
    Rounds ``1..every`` share the first draw, and so on; the last draw is kept, not rebuilt."""

    @functools.lru_cache(maxsize=1)
    def draw(period: int) -> sp.csr_array:
        return mixing(make_graph(int(np.random.SeedSequence([seed, period + 1]).generate_state(1)[0])))

    return lambda round_: draw((round_ - 1) // every)


def sampled_clients_schedule(num_nodes: int, fraction: float, seed: int = 0) -> Schedule:
    """Each round a random ``fraction`` of the nodes averages all together; the rest keep their models.

    The FedAvg communication pattern as a gossip schedule (no server).
    """
    k = max(2, int(np.ceil(fraction * num_nodes))) if num_nodes > 1 else 1

    def schedule(round_: int) -> Clique:  # the chosen nodes' clique with weights 1/k: O(N), never k^2 entries
        chosen = np.sort(_round_rng(seed, round_).choice(num_nodes, size=k, replace=False))
        return uniform_clique_weights(Clique(num_nodes, chosen))

    return schedule


def sequence_schedule(Ws: Sequence[sp.csr_array]) -> Schedule:
    """A user-given list of mixing matrices, used in turn and repeated."""
    if not Ws:
        raise ValueError("topology.sequence: needs at least one graph")
    return lambda round_: Ws[(round_ - 1) % len(Ws)]



# ---------------------------------------------------------------------------------------------
# Specs (topology.schedule)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.spec import Capabilities  # noqa: E402
from peerlearn.topology.base import SCHEDULES, ScheduleSpec, config_error  # noqa: E402
from peerlearn.topology.random_graphs import read_edge_list  # noqa: E402

_VARYING = Capabilities(time_varying=True)


@SCHEDULES.register
class StaticSpec(ScheduleSpec):
    """The graph's W every round."""

    name: Literal["static"] = "static"
    uses_graph: ClassVar = True

    def build(self, ctx):
        return None


@SCHEDULES.register
class RandomMatchingSpec(ScheduleSpec):
    """A random perfect matching each round; pairs average (Boyd et al., 2006)."""

    name: Literal["random_matching"] = "random_matching"
    capabilities: ClassVar = _VARYING

    def build(self, ctx):
        return random_matching_schedule(ctx.num_nodes, ctx.seed("schedule"))


@SCHEDULES.register
class OnePeerExponentialSpec(ScheduleSpec):
    """One peer per round, 2^k hops away in turn (Ying et al., NeurIPS 2021)."""

    name: Literal["one_peer_exponential"] = "one_peer_exponential"
    capabilities: ClassVar = _VARYING

    def build(self, ctx):
        return one_peer_exponential_schedule(ctx.num_nodes)


@SCHEDULES.register
class ResampleSpec(ScheduleSpec):
    """A new draw of the random graph every round (epidemic learning, de Vos et al., NeurIPS 2023), or every
    ``every`` rounds (a slowly varying network, Metelev et al., ICML 2023)."""

    name: Literal["resample"] = "resample"
    every: int = Field(1, ge=1, le=1_000_000, description="draw a new graph every this many rounds (1: every "
                       "round; more: a slowly varying network)")
    capabilities: ClassVar = _VARYING
    uses_graph: ClassVar = True

    def check(self, cfg) -> None:
        graph = cfg.topology.graph
        if not graph.capabilities.random:
            from peerlearn.topology.base import GRAPHS

            randoms = [n for n, c in GRAPHS.items() if c.capabilities.random]
            raise config_error("topology.graph", f"schedule resample draws a new random graph each round; use one "
                                                 f"of {', '.join(randoms)}, got {graph.name}")

    def build(self, ctx):
        n = ctx.num_nodes
        return resampled_schedule(lambda s: ctx.graph.build(n, s), ctx.mixing, ctx.seed("schedule"), self.every)


@SCHEDULES.register
class SampledSpec(ScheduleSpec):
    """A random fraction of the nodes averages all together each round (FedAvg's pattern, no server)."""

    name: Literal["sampled"] = "sampled"
    fraction: float = Field(0.25, gt=0.0, le=1.0, description="fraction of nodes averaging per round")
    capabilities: ClassVar = _VARYING

    def build(self, ctx):
        return sampled_clients_schedule(ctx.num_nodes, self.fraction, ctx.seed("schedule"))


@SCHEDULES.register
class SequenceSpec(ScheduleSpec):
    """A user's list of edge-list files, used in turn."""

    name: Literal["sequence"] = "sequence"
    sequence: list[str] = Field([], description="edge-list files used in turn")
    capabilities: ClassVar = _VARYING

    def check(self, cfg) -> None:
        if not self.sequence:
            raise config_error("topology.sequence", "schedule sequence needs a list of edge-list files")

    def build(self, ctx):
        return sequence_schedule([ctx.mixing(read_edge_list(p, ctx.num_nodes, "topology.sequence")) for p in self.sequence])
