import networkx as nx
import numpy as np
import pytest

from peerlearn.topology import (barabasi_albert_graph, complete_graph, cycle_graph, degrees, erdos_renyi_graph,
                                exponential_graph, from_edge_list, from_networkx, hypercube_graph, is_connected,
                                path_graph, random_regular_graph, require_connected, star_graph, torus_graph,
                                watts_strogatz_graph)

# (generator, num_nodes) -> expected degree sequence property
GENERATORS = {
    "complete": lambda n: complete_graph(n),
    "ring": lambda n: cycle_graph(n),
    "path": lambda n: path_graph(n),
    "star": lambda n: star_graph(n),
    "torus": lambda n: torus_graph(n),
    "hypercube": lambda n: hypercube_graph(n),
    "exponential": lambda n: exponential_graph(n),
    "random_regular": lambda n: random_regular_graph(n, 4, seed=1),
    "erdos_renyi": lambda n: erdos_renyi_graph(n, 0.5, seed=1),
    "watts_strogatz": lambda n: watts_strogatz_graph(n, 4, 0.2, seed=1),
    "barabasi_albert": lambda n: barabasi_albert_graph(n, 2, seed=1),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_is_symmetric_loopless_connected(name):
    adj = GENERATORS[name](16)
    dense = adj.toarray()
    assert dense.shape == (16, 16)
    assert np.array_equal(dense, dense.T)
    assert np.all(np.diag(dense) == 0)
    assert set(np.unique(dense)) <= {0.0, 1.0}
    assert is_connected(adj)


def test_degrees_of_deterministic_graphs():
    assert set(degrees(cycle_graph(10))) == {2}
    assert set(degrees(complete_graph(7))) == {6}
    assert sorted(degrees(path_graph(5))) == [1, 1, 2, 2, 2]
    assert sorted(degrees(star_graph(6))) == [1, 1, 1, 1, 1, 5]
    assert set(degrees(torus_graph(64))) == {4}
    assert torus_graph(12).nnz == 12 * 4  # 3 x 4 torus
    assert set(degrees(hypercube_graph(32))) == {5}
    assert set(degrees(exponential_graph(16))) == {7}  # hops 1,2,4,8 both ways; 8 coincides
    assert set(degrees(random_regular_graph(20, 3, seed=0))) == {3}


def test_networkx_agreement():
    for ours, theirs in [(cycle_graph(9), nx.cycle_graph(9)), (hypercube_graph(16), nx.hypercube_graph(4)),
                         (torus_graph(25), nx.grid_2d_graph(5, 5, periodic=True))]:
        assert sorted(degrees(ours)) == sorted(d for _, d in theirs.degree())
        assert ours.nnz == 2 * theirs.number_of_edges()


def test_random_graphs_are_seeded():
    a = random_regular_graph(30, 4, seed=7).toarray()
    assert np.array_equal(a, random_regular_graph(30, 4, seed=7).toarray())
    assert not np.array_equal(a, random_regular_graph(30, 4, seed=8).toarray())


@pytest.mark.parametrize("call, field", [
    (lambda: random_regular_graph(15, 3), "num_nodes \\* degree even"),
    (lambda: random_regular_graph(8, 8), "degree < num_nodes"),
    (lambda: hypercube_graph(12), "power of 2"),
    (lambda: torus_graph(13), "factorisation"),
    (lambda: erdos_renyi_graph(10, 0.0), "0 < p"),
    (lambda: watts_strogatz_graph(5, 5, 0.1), "k < num_nodes"),
    (lambda: barabasi_albert_graph(4, 4), "m < num_nodes"),
])
def test_impossible_parameters_are_errors(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_disconnected_graph_is_an_error():
    two_rings = from_networkx(nx.disjoint_union(nx.cycle_graph(4), nx.cycle_graph(4)))
    assert not is_connected(two_rings)
    with pytest.raises(ValueError, match="disconnected \\(2 components\\)"):
        require_connected(two_rings, "file")


def test_edge_list_file(tmp_path):
    f = tmp_path / "g.txt"
    f.write_text("# a square with a diagonal\n0 1\n1 2\n2 3\n3 0\n0 2\n")
    adj = from_edge_list(f)
    assert sorted(degrees(adj)) == [2, 2, 3, 3]
    with pytest.raises(ValueError, match="names node 3 but num_nodes=3"):
        from_edge_list(f, num_nodes=3)
    with pytest.raises(ValueError, match="does not exist"):
        from_edge_list(tmp_path / "missing.txt")
