"""Communication graphs, mixing rules and time-varying schedules.

An adjacency is a symmetric ``scipy.sparse.csr_array`` of 0/1 with an empty diagonal; a
mixing matrix ``W_NN`` is a ``csr_array`` of float64 weights including the diagonal.
"""

from peerlearn.topology.base import GRAPHS, MIXING, SCHEDULES, TopologySpec
from peerlearn.topology import graphs, random_graphs, mixing, directed, schedules  # noqa: F401,I001 (registry order)
from peerlearn.topology.directed import (
    column_stochastic_weights,
    directed_cycle_graph,
    directed_exponential_graph,
    is_strongly_connected,
)
from peerlearn.topology.graphs import (
    complete_graph,
    cycle_graph,
    degrees,
    exponential_graph,
    hypercube_graph,
    is_connected,
    path_graph,
    require_connected,
    star_graph,
    torus_graph,
)
from peerlearn.topology.mixing import (
    max_degree_weights,
    metropolis_hastings_weights,
    spectral_gap,
    uniform_weights,
)
from peerlearn.topology.random_graphs import (
    barabasi_albert_graph,
    erdos_renyi_graph,
    from_edge_list,
    from_networkx,
    random_regular_graph,
    watts_strogatz_graph,
)

__all__ = [
    "GRAPHS", "MIXING", "SCHEDULES", "TopologySpec",
    "barabasi_albert_graph", "column_stochastic_weights", "complete_graph", "directed_cycle_graph",
    "directed_exponential_graph", "is_strongly_connected", "schedules", "cycle_graph", "degrees", "erdos_renyi_graph", "exponential_graph",
    "from_edge_list", "from_networkx", "hypercube_graph", "is_connected", "max_degree_weights",
    "metropolis_hastings_weights", "path_graph", "random_regular_graph", "require_connected", "spectral_gap",
    "star_graph", "torus_graph", "uniform_weights", "watts_strogatz_graph",
]
