import numpy as np
import pytest
import torch

from peerlearn import attacks
from peerlearn.config import parse_config
from peerlearn.build import build
from peerlearn.engines.comm import SimComm, Threat
from peerlearn.engines import simulate
from peerlearn.topology import barabasi_albert_graph, cycle_graph, metropolis_hastings_weights
from tests.conftest import tiny_config


def _threat(byz, attack, n, sybil=False):
    honest = np.ones(n, dtype=bool)
    honest[byz] = False
    view = np.tile(honest, (len(byz), 1)).astype(np.float32)
    view /= view.sum(1, keepdims=True)
    return Threat(torch.tensor(byz), attack, torch.from_numpy(view), sybil, torch.Generator().manual_seed(0))


def test_poisoning_replaces_only_byzantine_messages():
    n = 8
    comm = SimComm(metropolis_hastings_weights(cycle_graph(n)))
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    comm.set_threat(_threat([2, 5], attacks.sign_flip, n))
    received, valid = comm.gather(x, include_self=True)
    honest_mean = x[[0, 1, 3, 4, 6, 7]].mean(0)
    torch.testing.assert_close(received[3, 1:][valid[3, 1:]].sum(0), -honest_mean + x[4])  # node 3 hears 2 (bad) and 4
    assert torch.equal(received[:, 0], x)  # a node's own model is never replaced in its own hands
    mixed = comm.mix(x)
    clean = SimComm(metropolis_hastings_weights(cycle_graph(n))).mix(x)
    assert torch.allclose(mixed[0], clean[0]) and not torch.allclose(mixed[1], clean[1])  # 1 neighbours 2


def test_sybil_clones_send_one_identical_message():
    n = 10
    comm = SimComm(metropolis_hastings_weights(barabasi_albert_graph(n, 2, seed=0)))
    comm.set_threat(_threat([1, 4, 7], attacks.large_norm, n, sybil=True))
    sent = comm._poison(torch.randn(n, 3))
    assert torch.equal(sent[1], sent[4]) and torch.equal(sent[4], sent[7])


def test_alie_and_ipm_follow_their_formulas():
    x = torch.randn(6, 5, dtype=torch.float64)
    view = torch.tensor([[0.25, 0.25, 0.25, 0.25, 0, 0], [0, 0, 0, 0, 0.5, 0.5]], dtype=torch.float64)
    seen, g = attacks.HonestView(x, view), torch.Generator()
    mean = torch.stack([x[:4].mean(0), x[4:].mean(0)])
    std = torch.stack([x[:4].std(0, unbiased=False), x[4:].std(0, unbiased=False)])
    assert torch.allclose(seen.mean, mean) and torch.allclose(seen.std, std)
    own = torch.randn(2, 5, dtype=torch.float64)
    assert torch.allclose(attacks.alie(own, seen, g, z=1.5), mean - 1.5 * std)
    assert torch.allclose(attacks.ipm(own, seen, g, epsilon=0.1), -0.1 * mean)


def test_dmpa_pushes_along_the_top_principal_direction_by_z_deviations():
    """Honest models spread mostly along one planted direction: the colluders' shift lies along it."""
    g = torch.Generator().manual_seed(0)
    p, n = 40, 200
    direction = torch.randn(p, generator=g, dtype=torch.float64)
    direction /= direction.norm()
    center = torch.randn(p, generator=g, dtype=torch.float64)
    x = center + 3.0 * torch.randn(n, 1, generator=g, dtype=torch.float64) * direction \
        + 0.1 * torch.randn(n, p, generator=g, dtype=torch.float64)
    view = torch.full((3, n), 1.0 / n, dtype=torch.float64)  # three colluders who see everyone
    seen = attacks.HonestView(x, view)
    u, lam = seen.principal()
    centred = x - x.mean(0)
    top = torch.linalg.eigvalsh(centred.T @ centred / n)[-1]
    assert torch.allclose(lam, top.expand(3), rtol=1e-6)
    msg = attacks.dmpa(torch.zeros(3, p, dtype=torch.float64), seen, g, z=2.0)
    shift = msg - seen.mean
    assert torch.allclose(shift.norm(dim=1), 2.0 * top.sqrt().expand(3), rtol=1e-6)
    assert float((shift[0] / shift[0].norm() @ direction).abs()) > 0.99
    # colluders with the same view agree: to float64 rounding, not bit for bit (each is one row of a batched
    # GEMM, and MKL's AVX2 kernels round the rows of one product differently)
    assert torch.allclose(msg[0], msg[1], rtol=1e-12, atol=0) and torch.allclose(msg[1], msg[2], rtol=1e-12, atol=0)


def test_placement():
    adj = barabasi_albert_graph(50, 2, seed=0)
    deg = np.diff(adj.indptr)
    hubs = attacks.place_byzantine(adj, 5, "degree", seed=0)
    assert hubs.sum() == 5 and deg[hubs].min() >= np.sort(deg)[-5]
    ball = np.flatnonzero(attacks.place_byzantine(adj, 8, "cluster", seed=1))
    sub = adj[ball][:, ball]
    from scipy.sparse.csgraph import connected_components
    assert connected_components(sub, directed=False, return_labels=False) == 1
    assert attacks.place_byzantine(adj, 7, "random", seed=2).sum() == 7


def test_one_large_norm_node_ruins_its_ring_neighbours_and_the_median_holds():
    """The known result: one Byzantine input controls an average; the median ignores it.

    Compared with the same rule without the attack (the same Byzantine node behaving honestly).
    """
    final = {}
    for aggregator in ("gossip", "median"):
        for attack in (None, "large_norm"):
            cfg = tiny_config(num_rounds=40, eval_every=40, algorithm={"lr": 0.3, "aggregator": aggregator},
                              threat={"num_byzantine": 1, "attack": attack})
            final[aggregator, attack] = simulate(build(cfg))[-1]
    assert final["gossip", None]["acc_min"] > 0.5
    assert final["gossip", "large_norm"]["acc_max"] < 0.2  # the whole ring is destroyed, not just neighbours
    assert final["median", "large_norm"]["acc_mean"] > final["median", None]["acc_mean"] - 0.05
    assert final["median", "large_norm"]["acc_mean"] > 0.5


def test_median_holds_against_gaussian_noise_where_averaging_degrades():
    final = {}
    for aggregator in ("gossip", "median"):
        cfg = tiny_config(num_rounds=40, eval_every=40, topology={"graph": "random_regular", "degree": 6},
                          algorithm={"lr": 0.3, "aggregator": aggregator},
                          threat={"num_byzantine": 3, "attack": "gaussian", "sigma": 3.0})
        final[aggregator] = simulate(build(cfg))[-1]["acc_mean"]
    assert final["median"] > final["gossip"] + 0.1, final


def test_label_flip_poisons_only_byzantine_batches_and_reports_success():
    b = build(tiny_config(num_rounds=10, eval_every=10, threat={"num_byzantine": 4, "attack": "label_flip"}))
    poisoned = b.batches.poisoned_N
    assert int(poisoned.sum()) == 4 and torch.equal(~poisoned, b.honest_N)
    x, y = b.batches.next()
    for i in range(16):
        labels = {int(v) for v in y[i]}
        own = set(b.dataset.y_train[b.parts[i]].tolist())
        flipped = {9 - v for v in own}
        assert labels <= (flipped if poisoned[i] else own)
    row = simulate(b)[-1]
    assert 0.0 <= row["attack_success"] <= 1.0


def test_trigger_stamps_the_top_left_patch():
    flat = attacks.add_trigger(torch.zeros(2, 64), (64,), size=3, value=16.0).reshape(2, 8, 8)
    assert flat[:, :3, :3].eq(16).all() and flat.sum() == 2 * 9 * 16
    image = attacks.add_trigger(torch.zeros(1, 2, 5, 5), (2, 5, 5), size=2, value=1.0)
    assert image[0, :, :2, :2].eq(1).all() and image.sum() == 8
    odd = attacks.add_trigger(torch.zeros(1, 40), (40,), size=3, value=1.0)
    assert odd[0, :9].eq(1).all() and odd.sum() == 9


def test_backdoor_poisons_a_fraction_of_byzantine_batches():
    b = build(tiny_config(threat={"num_byzantine": 4, "attack": "backdoor", "target_label": 7,
                                  "poison_fraction": 0.5}))
    poisoned = b.batches.poisoned_N
    x, y = b.batches.next()
    trigger = attacks.add_trigger(x, b.dataset.input_shape, 3, float(b.dataset.x_train.max()))
    stamped = (x == trigger).all(-1)
    assert not stamped[~poisoned].any()  # honest batches carry no trigger
    assert (y[poisoned][stamped[poisoned]] == 7).all()
    assert 0.2 < float(stamped[poisoned].double().mean()) < 0.8  # about half of each poisoned batch
    x_att, y_att = b.attack_test
    assert (y_att == 7).all() and len(y_att) == int((b.dataset.y_test != 7).sum())


def test_backdoor_succeeds_against_averaging_while_the_main_task_survives():
    """The known result: a few backdoored peers implant the trigger in everyone's averaged model."""
    from peerlearn.metrics import accuracy
    from peerlearn.models.functional import predict_logits

    cfg = tiny_config(num_rounds=60, eval_every=60, topology={"graph": "complete"}, algorithm={"lr": 0.3},
                      threat={"num_byzantine": 4, "attack": "backdoor", "target_label": 0, "poison_fraction": 0.5})
    attacked = simulate(build(cfg))[-1]
    clean = build(cfg.model_copy(update={"threat": cfg.threat.model_copy(update={"attack": None})}))
    final = []
    simulate(clean, on_finish=final.append)
    x_att, y_att = build(cfg).attack_test  # the same triggered test set, measured on the clean models
    base_rate = float(accuracy(predict_logits(clean.flat, final[0][clean.honest_N], x_att), y_att).mean())
    assert attacked["acc_mean"] > 0.75  # the main task survives: the attack hides
    assert attacked["attack_success"] > base_rate + 0.4, (attacked["attack_success"], base_rate)


@pytest.mark.parametrize("threat, algorithm, message", [
    ({"num_byzantine": 16}, {}, "threat.num_byzantine: must be < num_nodes=16"),
    ({"num_byzantine": 2, "fraction": 0.1}, {}, "threat.fraction: give threat.num_byzantine or threat.fraction"),
    ({"attack": "sign_flip"}, {}, "threat.attack: sign_flip needs Byzantine nodes"),
    ({"num_byzantine": 2, "attack": "alie"}, {"name": "fedavg"}, "fedavg: its clients upload to a trusted server average"),
    ({}, {"aggregator": "trimmed_mean", "f": 2}, "algorithm.f: trimmed_mean with f=2 needs every node to receive "
                                                   "at least 5 models (itself included); on this ring"),
    ({}, {"aggregator": "krum", "f": 1}, "algorithm.f: krum with f=1 needs"),
    ({}, {"name": "fedavg", "aggregator": "median"}, "algorithm.aggregator: not a key of algorithm fedavg"),
    ({"num_byzantine": 2, "attack": "backdoor", "target_label": 10}, {}, "threat.target_label: must be < 10"),
    ({}, {"aggregator": "bulyan", "f": 1}, "algorithm.f: bulyan with f=1 needs every node to receive at least 7"),
    ({"num_byzantine": 2, "attack": "label_flip", "space": "update"}, {}, "threat.space: update space is where"),
    ({"num_byzantine": 2, "attack": "alie", "space": "update"}, {"gossip_steps": 2}, "threat.space: update space needs"),
])
def test_invalid_threat_models_are_one_line_config_errors(threat, algorithm, message):
    from peerlearn.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)")):
        cfg = parse_config({"num_nodes": 16, "threat": threat, "algorithm": algorithm})
        build(cfg)


def test_matrix_command_writes_table_and_heatmap(tmp_path, capsys):
    import yaml

    from peerlearn import cli
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"num_nodes": 12, "num_rounds": 5, "eval_every": 5,
                                    "topology": {"graph": "random_regular", "degree": 4},
                                    "model": {"hidden": [8]}, "threat": {"num_byzantine": 2}}))
    out = tmp_path / "mx"
    assert cli.main(["matrix", str(path), "--attacks", "sign_flip", "--defenses", "gossip", "trimmed_mean:f=1",
                     "--out", str(out), "--quiet"]) == 0
    lines = (out / "matrix.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 2 and lines[0].startswith("attack,defense,acc_mean")
    assert (out / "matrix.png").stat().st_size > 5_000
    assert "sign_flip" in capsys.readouterr().out
    assert "trimmed_mean:f=1" in (out / "matrix.csv").read_text()
    assert cli.main(["matrix", str(path), "--attacks", "sign_flip", "--out", str(out)]) == 2  # never over a run
    assert "holds an earlier run" in capsys.readouterr().err
    assert cli.main(["matrix", str(path), "--attacks", "teleport", "--out", str(out), "--overwrite"]) == 2
    fresh = tmp_path / "mx2"
    assert cli.main(["matrix", str(path), "--defenses", "krum:f=5", "--out", str(fresh)]) == 2  # f too large
    assert "algorithm.f: krum with f=5" in capsys.readouterr().err
    assert not fresh.exists()  # every pair is checked before anything is written


def test_foolsgold_neutralises_identical_sybil_clones_where_the_mean_does_not():
    """Four Sybil identities send one poisoned model to everyone (complete graph)."""
    final = {}
    for aggregator in ("gossip", "foolsgold"):
        for attack in (None, "sign_flip"):
            cfg = tiny_config(num_rounds=40, eval_every=40, topology={"graph": "complete"},
                              algorithm={"lr": 0.3, "aggregator": aggregator},
                              threat={"num_byzantine": 4, "attack": attack, "sybil": True})
            final[aggregator, attack] = simulate(build(cfg))[-1]["acc_mean"]
    assert final["gossip", "sign_flip"] < 0.2
    assert final["foolsgold", "sign_flip"] > 0.6
    assert final["foolsgold", "sign_flip"] > final["foolsgold", None] - 0.1


def test_foolsgold_needs_a_common_initial_model():
    from peerlearn.config import ConfigError

    with pytest.raises(ConfigError, match="model.same_init: foolsgold"):
        parse_config({"algorithm": {"aggregator": "foolsgold"}, "model": {"same_init": False}})


def test_alie_auto_z_is_the_papers_z_max_from_n_and_f():
    """Baruch et al. (NeurIPS 2019): s = floor(n/2 + 1) - f supporters needed, z = Phi^-1((n - s) / n)."""
    from scipy.stats import norm

    from peerlearn.attacks.model_poisoning import alie_z
    from peerlearn.build import build
    from tests.conftest import tiny_config

    assert alie_z(64, 10) == pytest.approx(0.3601, abs=1e-4)  # the robustness docs' setting
    assert alie_z(16, 2) == pytest.approx(norm.ppf(9 / 16))
    assert alie_z(64, 20) > alie_z(64, 10) > alie_z(64, 2)  # more attackers: they may go further out
    b = build(tiny_config(threat={"attack": "alie", "num_byzantine": 3, "z": "auto"}))
    assert b.threat.attack.keywords["z"] == pytest.approx(alie_z(16, 3))
    fixed = build(tiny_config(threat={"attack": "alie", "num_byzantine": 3, "z": 0.7}))
    assert fixed.threat.attack.keywords["z"] == 0.7


def test_a_diverging_matrix_cell_is_recorded_and_the_matrix_goes_on(tmp_path, capsys):
    """Issue 37: the matrix's cells end as runs do (runner.outcome): a cell whose training diverges (an
    absurd step size, no attack, so the divergence rule watches it) is a `diverged` row, and the cells after
    it still run."""
    import csv

    import yaml

    from peerlearn import cli
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"num_nodes": 12, "num_rounds": 5, "eval_every": 5,
                                    "topology": {"graph": "random_regular", "degree": 4},
                                    "model": {"hidden": [8]}, "threat": {"num_byzantine": 2}}))
    assert cli.main(["matrix", str(path), "--attacks", "sign_flip", "--defenses", "gossip:lr=1e8", "gossip",
                     "--out", str(tmp_path / "mx")]) == 0
    with open(tmp_path / "mx" / "matrix.csv", newline="") as f:
        status = {(r["attack"], r["defense"]): r["status"] for r in csv.DictReader(f)}
    assert status == {("none", "gossip:lr=1e8"): "diverged", ("none", "gossip"): "completed",
                      ("sign_flip", "gossip:lr=1e8"): "completed", ("sign_flip", "gossip"): "completed"}
    assert "(diverged)" in capsys.readouterr().out


def test_matrix_cells_take_an_attacks_own_keys():
    from peerlearn.config import ConfigError
    from peerlearn.matrix import parse_member

    assert parse_member("alie:z=auto", "attack", "--attacks") == {"attack": "alie", "z": "auto"}
    assert parse_member("gaussian:sigma=3") == {"aggregator": "gaussian", "sigma": 3}
    with pytest.raises(ConfigError, match="--attacks alie:z"):
        parse_member("alie:z", "attack", "--attacks")


def test_in_update_space_an_attack_crafts_an_update_on_top_of_the_previous_message():
    """threat.space: update: ALIE's mu - z sigma of the honest *updates* (message minus previous message), sent on
    top of the Byzantine node's previous message; the first exchange has no update, so nothing is shifted."""
    n, z = 6, 1.5
    threat = _threat([4, 5], lambda own, seen, g: attacks.alie(own, seen, g, z=z), n)._replace(memory={})
    comm = SimComm(metropolis_hastings_weights(cycle_graph(n)))
    comm.set_threat(threat)
    x0 = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    first = comm._poison(x0)
    torch.testing.assert_close(first, x0)  # no update seen yet: every message as it was
    x1 = x0 + torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    second = comm._poison(x1)
    delta = (x1 - x0)[:4]
    crafted = delta.mean(0) - z * delta.std(0, unbiased=False)
    torch.testing.assert_close(second[4], x0[4] + crafted)
    torch.testing.assert_close(second[5], x0[5] + crafted)
    torch.testing.assert_close(second[:4], x1[:4])
    # the third exchange builds on what the Byzantine nodes sent in the second, not on their honest rows
    x2 = x1 + 0.1
    third = comm._poison(x2)
    torch.testing.assert_close(third[4], second[4] + 0.1)  # every honest update equal: mean 0.1, std 0
    # a checkpoint keeps what the attack remembers
    state = comm.state_dict()
    comm.load_state_dict({**state, "threat_prev": None})
    assert threat.memory == {}
    comm.load_state_dict(state)
    torch.testing.assert_close(threat.memory["prev"], third)


def test_alie_in_update_space_drifts_where_in_model_space_it_does_no_harm_and_a_resume_continues_it(tmp_path):
    from tests.conftest import checkpoint_keeper, same_rows

    def cfg(space):
        return tiny_config(num_rounds=40, eval_every=20, topology={"graph": "random_regular", "degree": 4},
                           algorithm={"lr": 0.5}, threat={"num_byzantine": 3, "attack": "alie", "z": 1.5, "space": space})

    model = simulate(build(cfg("model")))[-1]["acc_mean"]
    keep, snapshots = checkpoint_keeper(tmp_path)
    full = simulate(build(cfg("update")), on_checkpoint=keep)
    # -z sigma of the updates points the same way every round: the attackers' models drift without bound
    # (measured: 0.69 in model space, 0.10 in update space)
    assert full[-1]["acc_mean"] < model - 0.3, (full[-1]["acc_mean"], model)
    resumed = simulate(build(cfg("update")), resume=snapshots[20])
    assert same_rows(resumed) == same_rows(full)


def test_a_swarm_refuses_update_space_before_any_peer_starts():
    from peerlearn.config import ConfigError
    from peerlearn.engines.p2p import peer

    cfg = tiny_config(threat={"num_byzantine": 2, "attack": "alie", "space": "update"})
    with pytest.raises(ConfigError, match="^config error: threat.space: an attack on a swarm"):
        peer.check_config(cfg, 2)
