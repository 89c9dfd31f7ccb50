"""SybilWall's history gossip: the lone-Sybil-neighbour node FoolsGold leaves at 0.21 is protected, records
spread no faster than the graph allows and never replace a direct one, their bytes are counted, and a resumed
run continues the gossip."""

import networkx as nx
import numpy as np

from peerlearn.build import build
from peerlearn.engines import simulate
from tests.conftest import checkpoint_keeper, same_rows, tiny_config


def _sybils(aggregator: str, degree: int = 8, attack: str | None = "sign_flip", rounds: int = 40,
            eval_every: int | None = None):
    return tiny_config(num_rounds=rounds, eval_every=eval_every or rounds,
                       topology={"graph": "random_regular", "degree": degree},
                       algorithm={"lr": 0.3, "aggregator": aggregator},
                       threat={"num_byzantine": 4, "attack": attack, "sybil": True})


def test_the_history_gossip_protects_the_node_with_a_single_sybil_neighbour():
    foolsgold = simulate(build(_sybils("foolsgold")))[-1]
    sybilwall = simulate(build(_sybils("sybilwall")))[-1]
    clean = simulate(build(_sybils("sybilwall", attack=None)))[-1]
    # measured: foolsgold 0.66 (min 0.21), sybilwall 0.78 (min 0.67), sybilwall without Sybils 0.77 (min 0.67)
    assert foolsgold["acc_min"] < 0.3 and sybilwall["acc_min"] > foolsgold["acc_min"] + 0.3, (foolsgold, sybilwall)
    assert sybilwall["acc_mean"] > clean["acc_mean"] - 0.05


def test_records_travel_one_hop_a_round_never_replace_direct_ones_and_are_paid_for(tmp_path):
    rounds = 6
    cfg = _sybils("sybilwall", degree=3, attack=None, rounds=rounds, eval_every=1)
    built = build(cfg)
    keep, snapshots = checkpoint_keeper(tmp_path)

    rows = simulate(built, on_checkpoint=keep)
    graph = nx.from_scipy_sparse_array(built.adjacency)
    hops = dict(nx.all_pairs_shortest_path_length(graph))
    for r in range(1, rounds + 1):
        state = snapshots[r]["state"].combine
        known, dist = state["known_NN"], state["dist_NN"]
        for i, p in zip(*np.nonzero(known.numpy())):
            assert int(dist[i, p]) >= hops[int(i)][int(p)], (r, i, p)  # no record arrives faster than the graph
            assert int(dist[i, p]) <= r + 1  # one hop more per round (the round's forwards are held already)
            if hops[int(i)][int(p)] == 1:
                assert int(dist[i, p]) == 1  # a neighbour's record is its own message, never a relayed one
    assert int(snapshots[rounds]["state"].combine["known_NN"].sum()) > 3 * 16  # beyond the neighbours
    record = 4 * built.params_NP.shape[1] + 12
    links = 2 * graph.number_of_edges()
    model = 4 * built.params_NP.shape[1]
    # every round each link carries a model and (from round 1 on, every node has records) one history record
    assert rows[-1]["bytes_sent_total"] == rounds * links * (model + record)


def test_a_resumed_run_continues_the_history_gossip(tmp_path):
    cfg = _sybils("sybilwall", degree=4, rounds=12, eval_every=4)
    keep, snapshots = checkpoint_keeper(tmp_path)

    full = simulate(build(cfg), on_checkpoint=keep)
    resumed = simulate(build(cfg), resume=snapshots[4])
    assert same_rows(resumed) == same_rows(full)
