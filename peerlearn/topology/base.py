"""The topology families: graphs, mixing rules and schedules (their specs and registries), and the
``topology:`` section that names one of each."""

from __future__ import annotations

from typing import Callable, ClassVar, Literal

import scipy.sparse as sp
from pydantic import SerializeAsAny

from peerlearn.topology.clique import as_csr
from peerlearn.spec import ConfigError, GraphContext, Registry, Spec, config_error, slot


class GraphSpec(Spec):
    """A communication graph: ``build(num_nodes, seed) -> adjacency`` (scipy csr, 0/1, empty diagonal)."""

    factory: ClassVar[Callable]
    bytes_per_edge: ClassVar[int] = 300
    """Peak bytes an edge costs while the graph is built: random graphs are drawn through networkx (a
    dict entry per direction and an attribute dict: 283 bytes an edge measured for G(2000, 1)), then
    kept as CSR adjacency and weights."""

    def expected_edges(self, num_nodes: int) -> float | None:
        """About how many edges the graph will have, for the memory check before it is built; None when
        it stays small for any size (rings, tori, exponential graphs) or cannot be known (a file)."""
        return None

    def build(self, num_nodes: int, seed: int) -> sp.csr_array:
        extra = {"seed": seed} if self.capabilities.random else {}
        return type(self).factory(num_nodes=num_nodes, **self.kwargs(), **extra)


class MixingSpec(Spec):
    """A rule turning a graph into mixing weights: ``build()(adjacency) -> W``.

    A complete graph arrives as a :class:`~peerlearn.topology.clique.Clique` only to rules that set
    ``takes_cliques`` (the built-in ones return a clique of weights); any other rule gets scipy CSR.
    """

    factory: ClassVar[Callable]
    takes_cliques: ClassVar[bool] = False

    def build(self) -> Callable[[sp.csr_array], sp.csr_array]:
        rule = type(self).factory
        if self.takes_cliques:
            return rule
        return lambda adj: rule(as_csr(adj))


class ScheduleSpec(Spec):
    """A time-varying topology: ``build(ctx) -> schedule(round) -> W``, or None (static); ``ctx.graph`` and
    ``ctx.mixing`` are the run's graph member and mixing rule."""

    uses_graph: ClassVar[bool] = False  # the static graph is drawn (and must be connected)

    def build(self, ctx: GraphContext):
        raise NotImplementedError


GRAPHS = Registry("graph", GraphSpec, "topology.graph", "communication graphs")
MIXING = Registry("mixing", MixingSpec, "topology.mixing", "rules turning a graph into weights W")
SCHEDULES = Registry("schedule", ScheduleSpec, "topology.schedule", "time-varying topologies")


class TopologySpec(Spec):
    """The topology section: a graph, a mixing rule and a schedule, each with its own keys."""

    graph: SerializeAsAny[GraphSpec] = slot(GRAPHS, "ring", "communication graph")
    mixing: SerializeAsAny[MixingSpec] = slot(MIXING, "metropolis_hastings", "rule turning the graph into weights W")
    schedule: SerializeAsAny[ScheduleSpec] = slot(SCHEDULES, "static", "time-varying topology")
    slots: ClassVar = {"graph": GRAPHS, "mixing": MIXING, "schedule": SCHEDULES}

    def check(self, cfg) -> None:
        g, m, s = self.graph.capabilities, self.mixing.capabilities, self.schedule.capabilities
        if g.directed and not s.time_varying and not m.column_stochastic:
            raise config_error("topology.mixing", f"the directed graph {self.graph.name} needs column_stochastic "
                                                  f"weights, got {self.mixing.name}")


__all__ = ["GRAPHS", "MIXING", "SCHEDULES", "ConfigError", "GraphSpec", "Literal", "MixingSpec", "ScheduleSpec",
           "TopologySpec"]
