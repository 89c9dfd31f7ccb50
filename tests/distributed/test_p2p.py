"""The p2p engine (issue 40) with real hivemind peers on 127.0.0.1: a swarm reproduces the simulator, a
peer killed mid-run leaves the others running, peers without the secret are refused, messages are read as
data, and what the engine does not run is one line before any peer starts."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("hivemind")
pytestmark = pytest.mark.integration  # real peers, seconds each

from peerlearn.engines.p2p.swarm import Admission, Swarm, decode, encode  # noqa: E402

QUICK = "configs/quickstart.yaml"
SMALL = {"num_nodes": 16, "num_rounds": 30, "eval_every": 10}


def _config(tmp_path: Path, **over) -> Path:
    cfg = yaml.safe_load(Path(QUICK).read_text())
    cfg.update({**SMALL, **over})
    path = tmp_path / "swarm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(path: Path) -> list[dict]:
    return _rows_of(path / "metrics.csv")


def _rows_of(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _swarm(config: Path, out: Path, nproc: int = 4, *extra: str, timeout: float = 180, **env):
    return subprocess.run([sys.executable, "-m", "peerlearn", "run", str(config), "--engine", "p2p", "--nproc",
                           str(nproc), "--out", str(out), "--quiet", *extra], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


SECRET_ENV = {"PEERLEARN_SECRET": "the-swarm-secret-0123456789", "OMP_NUM_THREADS": "1"}


def _peer(config: Path, out: Path, index: int, peers: int, *extra: str) -> subprocess.Popen:
    """``peerlearn peer`` started by hand, as on another machine: peer ``index`` of ``peers``, its run in ``out``."""
    return subprocess.Popen([sys.executable, "-m", "peerlearn", "peer", str(config), "--peer", f"{index}/{peers}",
                             "--out", str(out), "--quiet", *extra], env={**os.environ, **SECRET_ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _simulated(config: Path) -> list[dict]:
    from peerlearn.build import build
    from peerlearn.config import load_config
    from peerlearn.engines import simulate

    return simulate(build(load_config(str(config), [])))


def _event_engine_finals(config: Path, tmp_path: Path) -> list[float]:
    """The event engine's final accuracy for ``config`` at seeds 0, 1 and 2 (an asynchronous swarm's yardstick)."""
    finals = []
    for seed in (0, 1, 2):
        cfg = yaml.safe_load(config.read_text())
        cfg["seed"] = seed
        (tmp_path / f"s{seed}.yaml").write_text(yaml.safe_dump(cfg))
        finals.append(_simulated(tmp_path / f"s{seed}.yaml")[-1]["acc_mean"])
    return finals


def test_four_peers_reproduce_the_simulator(tmp_path):
    """Every message on time: each peer computes the simulator's rows for its nodes (the same batches, the same
    gossip), so the node-weighted mean over the peers is the simulator's, at every evaluated round."""
    config = _config(tmp_path)
    done = _swarm(config, tmp_path / "swarm")
    assert done.returncode == 0, done.stderr[-2000:]
    peers = [_rows(tmp_path / "swarm" / f"peer{i}") for i in range(4)]
    last = [p[-1] for p in peers]  # every message delivered (a dropped one would change the numbers below)
    assert all(int(r["dropped_messages"]) == 0 and int(r["unsent_messages"]) == 0 for r in last), last
    sim = _simulated(config)
    assert [int(r["round"]) for r in peers[0]] == [r["round"] for r in sim] == [0, 10, 20, 30]
    for k, row in enumerate(sim):
        assert abs(np.mean([float(p[k]["acc_mean"]) for p in peers]) - row["acc_mean"]) < 1e-6
        if k:
            assert abs(np.mean([float(p[k]["loss_mean"]) for p in peers]) - row["loss_mean"]) < 1e-5
    merged = _rows_of(tmp_path / "swarm" / "swarm.csv")  # the swarm's own table: its peers' nodes together
    assert [int(float(r["round"])) for r in merged] == [0, 10, 20, 30] and (tmp_path / "swarm" / "swarm.png").is_file()
    assert all(abs(float(m["acc_mean"]) - s["acc_mean"]) < 1e-6 and int(float(m["peers"])) == 4
               for m, s in zip(merged, sim))
    assert all(int(r["peers_seen"]) == 4 for r in last)
    assert all(0 < int(r["overhead_bytes_sent"]) < int(r["payload_bytes_sent"]) for r in last)
    ids = {json.loads((tmp_path / "swarm" / f"peer{i}" / "peer.json").read_text())["peer_id"] for i in range(4)}
    assert len(ids) == 4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["choco", "push_sum", "time_varying", "modest", "fedavg", "diloco", "spsa", "privacy",
                                  "distillation"])
def test_every_family_of_exchange_reproduces_the_simulator(tmp_path, name):
    """CHOCO's compressed differences, push-sum's weighted sums on a directed graph (each message a model and its
    weight), D-SGD on a one-peer exponential schedule (a new W every round, the same at every peer; a peer
    none of whose nodes listens to another peer in a round runs ahead) and MoDeST's sampled committees (each
    round's participants multicast to its aggregators, which multicast to the next sample), and the collectives
    without a server (FedAvg's server average, DiLoCo's all-reduce, SPSA's all-gather of
    one-byte projections: every peer sends its part to every other): the simulator's accuracy and bytes on 2
    peers (each exchange crosses between them); private D-SGD with DECOR's pairwise-cancelling noise
    (drawn from a seed each pair of neighbours shares, on two peers alike) and the worst node's epsilon; and
    two-headed distillation (predictions gathered, the most confident neighbour's taken; the heads' accuracy a
    node-weighted mean over the peers in swarm.csv)."""
    cfg = yaml.safe_load((Path("configs") / f"{name}.yaml").read_text())
    cfg.update(SMALL)
    if name == "privacy":
        cfg["privacy"]["pairwise_multiplier"] = 0.5
    if name == "distillation":
        cfg["algorithm"]["heads"] = 2
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    done = _swarm(config, tmp_path / "swarm", 2)
    assert done.returncode == 0, done.stderr[-2000:]
    merged = _rows_of(tmp_path / "swarm" / "swarm.csv")
    sim = _simulated(config)
    assert [int(float(r["round"])) for r in merged] == [r["round"] for r in sim]
    assert all(abs(float(m["acc_mean"]) - s["acc_mean"]) < 1e-6 for m, s in zip(merged, sim))
    assert [int(m["bytes_sent_total"]) for m in merged] == [round(s["bytes_sent_total"]) for s in sim]
    assert int(merged[-1]["dropped_messages"]) == 0
    if name == "privacy":
        assert all(abs(float(m["epsilon"]) - s["epsilon"]) < 1e-9 * s["epsilon"] for m, s in zip(merged[1:], sim[1:]))
    if name == "distillation":
        assert all(abs(float(m["heads_acc_mean"]) - s["heads_acc_mean"]) < 1e-6 for m, s in zip(merged, sim))


def test_a_peer_killed_mid_run_leaves_the_others_running_to_the_end(tmp_path):
    config = _config(tmp_path)
    done = _swarm(config, tmp_path / "swarm", 4, "--timeout-s", "2", PEERLEARN_KILL="2:12")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "peer 2 was killed by SIGKILL" in done.stderr
    survivors = [_rows(tmp_path / "swarm" / f"peer{i}") for i in (0, 1, 3)]
    assert all(int(r[-1]["round"]) == 30 for r in survivors)
    assert all(json.loads((tmp_path / "swarm" / f"peer{i}" / "summary.json").read_text())["status"] == "completed"
               for i in (0, 1, 3))
    # the ring: peers 1 and 3 listen to peer 2's nodes and waited for them until it was presumed gone (3
    # exchanges); peer 0 may also drop a message or two of theirs that came late while they waited
    assert int(survivors[1][-1]["dropped_messages"]) >= 3 and int(survivors[2][-1]["dropped_messages"]) >= 3
    assert all(float(r[-1]["acc_mean"]) > float(r[1]["acc_mean"]) + 0.05 for r in survivors)  # they kept learning
    killed = _rows(tmp_path / "swarm" / "peer2")
    assert [int(r["round"]) for r in killed] == [0, 10]  # what it wrote before dying stays


def test_an_intruder_without_the_secret_is_refused_and_changes_nothing(tmp_path):
    """A process that reaches the swarm and floods peer 0 with well-formed messages for every round, but cannot
    prove the launch's secret: every message is refused and counted, the rows are the simulator's. Peer 0 starts alone and the other three only once a refusal has come back to the intruder, so the intruder
    is in the swarm before it runs, however slowly its start-up goes (a loaded machine once ran the whole swarm
    before the intruder's first message)."""
    config = _config(tmp_path)

    def peer(i: int, *join: str) -> subprocess.Popen:
        return _peer(config, tmp_path / f"peer{i}", i, 4, *join)

    card, reached = tmp_path / "peer0" / "peer.json", tmp_path / "intruder_reached"
    procs, intruder = [peer(0)], None
    try:
        deadline = time.monotonic() + 120
        while not card.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        intruder = subprocess.Popen([sys.executable, "-c", INTRUDER, str(card), str(config), str(reached)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while not reached.is_file() and intruder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert reached.is_file(), "the intruder never got an answer from peer 0"
        join = [a for m in json.loads(card.read_text())["maddrs"] for a in ("--join", m)]
        procs += [peer(i, *join) for i in (1, 2, 3)]
        outs = [p.communicate(timeout=180) for p in procs]
        refused, _ = intruder.communicate(timeout=60)
    finally:
        for p in [*procs, intruder]:
            if p is not None and p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * 4, [o[1][-1500:] for o in outs]
    assert int(refused.split()[-1]) > 0  # the intruder's messages were answered with a refusal
    peers = [_rows(tmp_path / f"peer{i}") for i in range(4)]
    sim = _simulated(config)
    assert abs(np.mean([float(p[-1]["acc_mean"]) for p in peers]) - sim[-1]["acc_mean"]) < 1e-6
    assert sum(int(p[-1]["refused_messages"]) for p in peers) > 0
    assert all(int(p[-1]["peers_seen"]) == 4 for p in peers)  # its roster record, without a proof, is ignored


INTRUDER = r'''
import json, sys, time
from pathlib import Path
import torch
from peerlearn.config import load_config, to_dict
from peerlearn.engines.join import config_digest
from peerlearn.engines.p2p.swarm import Admission, Swarm
card, run = Path(sys.argv[1]), config_digest(to_dict(load_config(sys.argv[2], [])))  # the config is no secret
reached = Path(sys.argv[3])
peer = json.loads(card.read_text())
me = Swarm(run, Admission(run, b"not the launch's secret, but long enough"), 4810, 16, initial_peers=peer["maddrs"])
me.announce({"index": 1, "nodes": [4, 8]}, ttl_s=30.0)  # a roster record without a valid proof
done, end = card.parent / "summary.json", time.monotonic() + 120
while time.monotonic() < end and not done.exists():  # until the swarm is done
    for r in range(1, 31):
        bad = {peer["peer_id"]: ({"round": r, "call": 0, "nodes": list(range(16))}, torch.full((16, 4810), 1e3))}
        if not done.exists():
            me.send_soon(bad, 2.0).result(10)
        if me.unsent.get("refused by the receiver", 0) and not reached.exists():
            reached.write_text("refused")  # the test starts the other peers now
    time.sleep(0.2)
me.close()
print(me.unsent.get("refused by the receiver", 0))  # the messages the swarm answered with a refusal
'''


def test_a_message_sent_just_before_leaving_is_delivered():
    """A peer's last messages (its final round's) reach their receivers though it leaves at once: a message is
    delivered when the receiver acknowledges it, and a peer that leaves first waits for its sends under way."""
    run, secret = "run", b"s" * 32
    a = Swarm(run, Admission(run, secret), 6, 16)
    b = Swarm(run, Admission(run, secret), 6, 16, initial_peers=a.maddrs())
    outsider = Swarm(run, Admission(run, b"t" * 32), 6, 16, initial_peers=a.maddrs())
    try:
        rows = torch.arange(12.0).reshape(2, 6)
        for call in range(20):
            a.send_soon({b.peer_id: ({"round": 7, "call": call, "nodes": [4, 5]}, rows + call)}, 10.0)
        a.close()  # at once: the sends are still under way
        for call in range(20):
            got, senders = b.inbox.wait((7, call), {a.peer_id}, time.monotonic() + 5)
            assert senders == {a.peer_id} and torch.equal(got[5], rows[1] + call)
        assert a.unsent == {} and a.payload_sent == 20 * 12 * 4
        reached = outsider.send_soon({b.peer_id: ({"round": 9, "call": 0, "nodes": [4]}, rows[:1])}, 10.0).result(15)
        assert reached == set() and outsider.unsent == {"refused by the receiver": 1}  # answered, not retried
        assert b.refused_messages == 1
    finally:
        b.close()
        outsider.close()


def test_admission_proves_the_secret_for_the_peers_own_id():
    a, b = Admission("run", b"s" * 32), Admission("run", b"s" * 32)
    assert a.admits("QmPeer1", b.proof("QmPeer1"))
    assert not a.admits("QmPeer2", b.proof("QmPeer1"))  # a proof is for one peer id only
    assert not a.admits("QmPeer1", Admission("run", b"t" * 32).proof("QmPeer1"))
    assert not a.admits("QmPeer1", Admission("other run", b"s" * 32).proof("QmPeer1"))
    assert a.refused == {"QmPeer1", "QmPeer2"}
    listed = Admission("run", b"", {"QmListed"})
    assert listed.admits("QmListed", "") and not listed.admits("QmOther", "")
    assert Admission("run", b"").admits("anyone", "")  # --insecure


def test_messages_are_read_as_data():
    head, data = encode({"round": 3, "call": 0, "nodes": [4, 5], "run": "r"}, torch.ones(2, 6))
    header, rows = decode(head, data, num_params=6, max_rows=16)
    assert header["nodes"] == [4, 5] and torch.equal(rows, torch.ones(2, 6))
    bad = [
        (head, data[:-4]),  # cut
        (head, data + b"\0" * 4),  # longer than said
        (head.replace(b'"float32"', b'"object"'), data),  # not floats
        (json.dumps({"round": 3, "call": 0, "nodes": [4], "shape": [2, 6], "dtype": "float32"}).encode(), data),
        (json.dumps([1, 2]).encode(), data),
        (encode({"round": 1, "call": 0, "nodes": [0]}, torch.full((1, 6), float("nan")))),
    ]
    for h, d in bad:
        with pytest.raises((ValueError, TypeError)):
            decode(h, d, num_params=6, max_rows=16)
    with pytest.raises(ValueError):
        decode(head, data, num_params=3, max_rows=16)  # wider than this run's model and two scalars


@pytest.mark.parametrize("over, extra, says", [
    ({"algorithm": {"name": "gossip_learning", "lr": 0.1, "batch_size": 16}, "topology": {"schedule": "random_matching"}},
     [], "topology.schedule: gossip_learning on a swarm picks among the live neighbours of a static graph"),
    ({"faults": {"crash_fraction": 0.1}}, [], "faults:"),
    ({}, ["--peer", "4/4"], "--peer: the index must be between 0 and 3"),
    ({}, [], "start a swarm with --nproc K"),
])
def test_what_the_engine_does_not_run_is_one_line_before_any_peer(tmp_path, over, extra, says):
    config = _config(tmp_path, **over)
    done = subprocess.run([sys.executable, "-m", "peerlearn", "run", str(config), "--engine", "p2p", *extra,
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and says in done.stderr
    assert not (tmp_path / "out").exists()


def test_byzantine_nodes_are_contained_by_a_robust_aggregator_as_in_the_simulator(tmp_path):
    """Three of 16 nodes send the sign-flipped mean of what their peer has seen: with the plain gossip average the
    swarm collapses as the simulator does, with the coordinate-wise median it learns as the simulator does."""
    from peerlearn.build import build
    from peerlearn.config import load_config

    threat = {"num_byzantine": 3, "placement": "random", "attack": "sign_flip", "collusion": "all"}
    finals = {}
    for rule in ("median", None):
        algorithm = {"name": "dsgd", "lr": 0.2, "batch_size": 16, **({"aggregator": rule} if rule else {})}
        config = _config(tmp_path, num_rounds=60, eval_every=20, topology={"graph": "random_regular", "degree": 6},
                         model={"name": "mlp", "hidden": [32]}, algorithm=algorithm, threat=threat)
        done = _swarm(config, tmp_path / f"swarm-{rule}")
        assert done.returncode == 0, done.stderr[-2000:]
        honest = build(load_config(str(config), [])).honest_N
        weights = [int(honest[4 * i:4 * i + 4].sum()) for i in range(4)]
        accs = [float(_rows(tmp_path / f"swarm-{rule}" / f"peer{i}")[-1]["acc_mean"]) for i in range(4)]
        finals[rule] = (np.average(accs, weights=weights), _simulated(config)[-1]["acc_mean"])
    (p2p_median, sim_median), (p2p_mean, sim_mean) = finals["median"], finals[None]
    assert sim_mean < 0.2 and p2p_mean < 0.2  # the attack wins against the plain average
    assert p2p_median > 0.45 and abs(p2p_median - sim_median) < 0.05  # contained, as in the simulator


GOSSIP = {"num_rounds": 200, "eval_every": 100,
          "algorithm": {"name": "gossip_learning", "lr": 0.2, "batch_size": 16, "period_s": 0.05}}


@pytest.mark.slow
def test_gossip_learning_on_four_peers_learns_as_the_event_engine(tmp_path):
    """Each node on its own wall-clock timer sends its model to a random neighbour, which merges by age and trains:
    after the same number of exchanges per node (one per period) the swarm's accuracy is the event engine's, to
    within 0.05 of its mean over three seeds. Gossip learning's random walks make one swarm run noisy: ten runs
    measured 0.862-0.899 (0.862 on a loaded CI machine) against the event engine's 0.888-0.907 over seeds 0-2
    (the swarm takes in every message, where the event engine defers a send to a busy receiver). Nodes that
    train alone reach 0.66, so the bound still tells learning together from not."""
    config = _config(tmp_path, **GOSSIP)
    done = _swarm(config, tmp_path / "swarm")
    assert done.returncode == 0, done.stderr[-2000:]
    peers = [_rows(tmp_path / "swarm" / f"peer{i}") for i in range(4)]
    swarm_acc = np.mean([float(p[-1]["acc_mean"]) for p in peers])
    sent = [int(p[-1]["messages_sent"]) for p in peers]
    # 4 nodes per peer, one send per period at most; a peer that falls behind its timers on a loaded machine ends
    # the run with wakes still due, not made (CI once sent under 95%): at least 80% shows the timers ran
    assert all(0.8 * 4 * 200 <= s <= 4 * 200 for s in sent), sent
    sim = _event_engine_finals(config, tmp_path)
    assert abs(swarm_acc - np.mean(sim)) < 0.05, (swarm_acc, sim)


@pytest.mark.slow
@pytest.mark.extended  # the same swarm net as asynchronous push-sum's test (in CI)
def test_asynchronous_local_sgd_without_a_server_learns_as_the_event_engine(tmp_path):
    """Asynchronous local SGD with no parameter server: every peer keeps a replica of the server's model and
    applies its own workers' pushes and those the others broadcast. The other peers' pushes of a period reach
    a replica after its own wake (their workers pulled a model without them), where the event engine's
    equal-speed nodes all wake in one slice (staleness 0). Without outer momentum (with it, the staleness
    costs more, and more on a loaded machine: 0.942 and 0.90 measured against 0.968) the swarm ends within
    0.05 of the event engine's mean over three seeds, and every push is delivered."""
    algorithm = {**GOSSIP["algorithm"], "name": "async_local_sgd", "outer_momentum": 0.0}
    config = _config(tmp_path, **{**GOSSIP, "algorithm": algorithm})
    done = _swarm(config, tmp_path / "swarm")
    assert done.returncode == 0, done.stderr[-2000:]
    last = [_rows(tmp_path / "swarm" / f"peer{i}")[-1] for i in range(4)]
    assert all(int(r["unsent_messages"]) == 0 and int(r["messages_sent"]) > 3 * 100 for r in last), last
    swarm_acc = np.mean([float(r["acc_mean"]) for r in last])
    sim = _event_engine_finals(config, tmp_path)
    assert abs(swarm_acc - np.mean(sim)) < 0.05, (swarm_acc, sim)


@pytest.mark.slow
def test_asynchronous_push_sum_on_four_peers_learns_as_the_event_engine(tmp_path):
    """Each node wakes once per period, trains and pushes half its mass to its ring neighbours without waiting for
    anyone (a message when the neighbour is on another peer; arrived mass is added at the next push): the
    swarm's accuracy is the event engine's to within 0.03 of its mean over three seeds, and every push across
    peers was delivered (the mass of a lost one would be gone)."""
    config = _config(tmp_path, **{**GOSSIP, "algorithm": {**GOSSIP["algorithm"], "name": "async_push_sum"}})
    done = _swarm(config, tmp_path / "swarm")
    assert done.returncode == 0, done.stderr[-2000:]
    last = [_rows(tmp_path / "swarm" / f"peer{i}")[-1] for i in range(4)]
    # on a ring of 16 nodes in 4 blocks, 2 nodes of each peer push across, once per period for 200 periods at most
    # (wakes still due at the end are not made on a loaded machine, as in the gossip-learning test: at least 80%)
    sent = [int(r["messages_sent"]) for r in last]
    assert all(0.8 * 2 * 200 <= s <= 2 * 200 for s in sent), sent
    assert all(int(r["unsent_messages"]) == 0 for r in last)
    assert sum(int(r["messages_received"]) for r in last) >= 0.98 * sum(int(r["messages_sent"]) for r in last)
    swarm_acc = np.mean([float(r["acc_mean"]) for r in last])
    sim = _event_engine_finals(config, tmp_path)
    assert abs(swarm_acc - np.mean(sim)) < 0.03, (swarm_acc, sim)


@pytest.mark.slow
@pytest.mark.extended  # CI joins a peer in the churn scenario test
def test_a_peer_that_joins_a_running_swarm_reaches_the_others_accuracy(tmp_path):
    """Five blocks of nodes, four peers start the swarm (``--wait-for 4``); the fifth is started once the swarm
    runs (it joins some rounds later: its start-up takes seconds, more on a busy machine, hence a 20 s run),
    starts from the models it receives and ends level with the others."""
    config = _config(tmp_path, num_nodes=20, **{**GOSSIP, "num_rounds": 400, "eval_every": 20})

    def peer(i: int, *join: str) -> subprocess.Popen:
        return _peer(config, tmp_path / f"peer{i}", i, 5, "--wait-for", "4", *join)

    procs = [peer(0)]
    try:
        card = tmp_path / "peer0" / "peer.json"
        deadline = time.monotonic() + 120
        while not card.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        join = [a for m in json.loads(card.read_text())["maddrs"] for a in ("--join", m)]
        procs += [peer(i, *join) for i in (1, 2, 3)]
        while time.monotonic() < deadline:  # the swarm runs: peer 0 has written the row of round 20
            rows = _rows(tmp_path / "peer0") if (tmp_path / "peer0" / "metrics.csv").is_file() else []
            if rows and int(rows[-1]["round"]) >= 20:
                break
            time.sleep(0.1)
        procs.append(peer(4, *join))
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * 5, [o[1][-1500:] for o in outs]
    joiner = _rows(tmp_path / "peer4")
    assert 20 <= int(joiner[0]["round"]) < 300 and int(joiner[-1]["round"]) == 400  # late, on the swarm's clock
    assert int(joiner[-1]["messages_received"]) > 0
    others = np.mean([float(_rows(tmp_path / f"peer{i}")[-1]["acc_mean"]) for i in range(4)])
    assert float(joiner[0]["acc_mean"]) < others - 0.2  # it started from scratch ...
    assert float(joiner[-1]["acc_mean"]) > others - 0.05  # ... and caught up


def test_a_peer_that_leaves_cleanly_is_not_waited_for(tmp_path):
    """D-SGD on 4 peers, peer 3 leaves after round 15 (a churn scenario): its rows end there with status ``left``,
    it exits 0, and the others go on to the end without waiting for it: the deadline is 60 s and the survivors'
    whole run takes less (they were told, not left to find out by its silence)."""
    config = _config(tmp_path)
    churn = tmp_path / "churn.yaml"
    churn.write_text("events:\n  - {peer: 3, round: 15, event: leave}\n")
    done = _swarm(config, tmp_path / "swarm", 4, "--churn", str(churn), "--timeout-s", "60")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "killed" not in done.stderr
    leaver = _rows(tmp_path / "swarm" / "peer3")
    assert [int(r["round"]) for r in leaver] == [0, 10, 15]
    assert json.loads((tmp_path / "swarm" / "peer3" / "summary.json").read_text())["status"] == "left"
    for i in range(3):
        rows = _rows(tmp_path / "swarm" / f"peer{i}")
        assert [int(r["round"]) for r in rows] == [0, 10, 20, 30] and float(rows[-1]["wall_time_s"]) < 60
        assert int(rows[-1]["peers_seen"]) == 3 and int(rows[-1]["unsent_messages"]) == 0
        assert json.loads((tmp_path / "swarm" / f"peer{i}" / "summary.json").read_text())["status"] == "completed"
    assert float(_rows(tmp_path / "swarm" / "peer0")[-1]["acc_mean"]) > float(leaver[1]["acc_mean"])  # learning on


@pytest.mark.slow
def test_a_churn_scenario_joins_leaves_and_crashes_peers_at_its_rounds(tmp_path):
    """Gossip learning on 5 peers with a scenario: peer 4 joins at round 40, peer 1 leaves at round 120, peer 2
    crashes at round 160. Each happens at its round: the joiner's first row is round 40 and it catches up
    with the others; the leaver's last row is round 120 (status left); the crashed peer wrote nothing after
    round 140 (its last evaluation); the rest run to round 200 and saw 4 peers, then 5 (the joiner, a second
    after it came), then 4 (the leaver gone; the crashed peer's record outlives the run)."""
    config = _config(tmp_path, num_nodes=20, **{**GOSSIP, "eval_every": 20})
    churn = tmp_path / "churn.yaml"
    churn.write_text("events:\n  - {peer: 4, round: 40, event: join}\n  - {peer: 1, round: 120, event: leave}\n"
                     "  - {peer: 2, round: 160, event: crash}\n")
    done = _swarm(config, tmp_path / "swarm", 5, "--churn", str(churn))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "peer 2 was killed by SIGKILL" in done.stderr
    rows = {i: _rows(tmp_path / "swarm" / f"peer{i}") for i in range(5)}
    status = {i: json.loads(p.read_text())["status"] for i in range(5)
              if (p := tmp_path / "swarm" / f"peer{i}" / "summary.json").is_file()}
    assert status == {0: "completed", 1: "left", 3: "completed", 4: "completed"}  # peer 2 crashed
    assert int(rows[4][0]["round"]) == 40 and int(rows[1][-1]["round"]) == 120 and int(rows[2][-1]["round"]) == 140
    assert all(int(rows[i][-1]["round"]) == 200 for i in (0, 3, 4))
    seen = {int(r["round"]): int(r["peers_seen"]) for r in rows[0]}
    assert seen[20] == 4 and seen[100] == 5 and seen[200] == 4  # the joiner came, the leaver went
    others = np.mean([float(rows[i][-1]["acc_mean"]) for i in (0, 3)])
    assert float(rows[4][0]["acc_mean"]) < others - 0.2 and float(rows[4][-1]["acc_mean"]) > others - 0.05
