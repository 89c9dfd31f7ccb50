"""Who joins a distributed run (issue 36, H1): the join protocol and the signed store on a real TCPStore
over 127.0.0.1, each party a thread with its own client, as separate machines would be. The whole
runs, with outsiders, across network namespaces are in test_multihost.py."""

from __future__ import annotations

import datetime
import json
import threading
import time

import pytest
import torch.distributed as dist

from peerlearn.engines.join import (JOIN, Doorkeeper, JoinRefused, SessionStore, TamperedValue, join, read_secret,
                                    request_join)
from peerlearn.engines.membership import Membership, loopback_store
from peerlearn.spec import ConfigError

SECRET = b"0123456789abcdef0123456789abcdef"
EXPECT = {"world": 3, "version": "0.1.0", "config": "c" * 64}
T = datetime.timedelta(seconds=10)


@pytest.fixture
def store():
    """The launch's store (a server on loopback) and a way to open clients of it, one per party."""
    server = loopback_store(0, T)
    yield lambda: dist.TCPStore("127.0.0.1", server.port, None, False, T, wait_for_workers=False)
    del server


def _try_join(client, rank, secret=SECRET, expect=EXPECT, timeout=10.0):
    """Run a joining rank in a thread; returns a dict that gets ``challenge`` or ``refused``."""
    out = {}

    def go():
        try:
            out["challenge"] = request_join(client, rank, secret, expect, timeout)
        except JoinRefused as err:
            out["refused"] = str(err)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return out, thread


def _wait_for_requests(client, count: int) -> None:
    deadline = time.monotonic() + 10
    while not client.check([JOIN + f"req/{i}" for i in range(count)]):
        assert time.monotonic() < deadline, "the joining threads did not write their requests"
        time.sleep(0.01)


def _keeper(store, lines, world=3):
    return Doorkeeper(store(), world, SECRET, EXPECT, lines.append)


def test_rank_0_admits_the_ranks_that_prove_the_secret_and_refuses_the_others(store):
    lines: list[str] = []
    keeper = _keeper(store, lines)
    # the outsiders come first, each claiming a rank the run still waits for
    outsiders = {"wrong secret": _try_join(store(), 1, secret=b"not-the-secret-at-all-0000000000"),
                 "no secret": _try_join(store(), 1, secret=b""),
                 "another config": _try_join(store(), 2, expect={**EXPECT, "config": "d" * 64}),
                 "another world": _try_join(store(), 2, expect={**EXPECT, "world": 4}),
                 "rank 0": _try_join(store(), 0)}
    _wait_for_requests(store(), len(outsiders))
    keeper.poll()
    for _, thread in outsiders.values():
        thread.join(10)
    causes = {"wrong secret": "proof of the secret is wrong", "no secret": "presented no proof",
              "another config": "its config (the resolved YAML and --set) differs",
              "another world": "its world size (WORLD_SIZE) differs", "rank 0": "is not a joining rank"}
    for who, cause in causes.items():
        assert cause in outsiders[who][0].get("refused", ""), (who, outsiders[who][0])
    assert len(lines) == 5 and all("; the run goes on" in line for line in lines), lines
    assert keeper.admitted == set()

    # the real ranks still get in, and the run starts
    ranks = [_try_join(store(), r) for r in (1, 2)]
    keeper.admit(10)
    for out, thread in ranks:
        thread.join(10)
        assert out.get("challenge") == keeper.challenge
    assert keeper.admitted == {1, 2} and keeper.started

    # a rank that comes after the start, or a second copy of a rank, is refused by the keeper's thread
    late, thread = _try_join(store(), 2)
    thread.join(10)
    assert "rank 2 is already in the run" in late["refused"]
    keeper.close()


def test_a_request_replayed_from_another_run_is_refused(store):
    """A request recorded in an earlier run (same secret) answers that run's challenge, not this one's."""
    first_lines: list[str] = []
    first = Doorkeeper(store(), 2, SECRET, {**EXPECT, "world": 2}, first_lines.append)
    out, thread = _try_join(store(), 1, expect={**EXPECT, "world": 2})
    first.admit(10)
    thread.join(10)
    recorded = store().get(JOIN + "req/0")

    server = loopback_store(0, T)  # the next run, with the same secret
    client = dist.TCPStore("127.0.0.1", server.port, None, False, T, wait_for_workers=False)
    lines: list[str] = []
    keeper = Doorkeeper(client, 2, SECRET, {**EXPECT, "world": 2}, lines.append)
    ticket = int(client.add(JOIN + "tickets", 1)) - 1
    client.set(JOIN + f"req/{ticket}", recorded)
    keeper.poll()
    verdict = json.loads(client.get(JOIN + f"verdict/{ticket}"))
    assert not verdict["admitted"] and "another run's challenge" in verdict["reason"]
    assert len(lines) == 1 and "another run's challenge" in lines[0]
    assert keeper.admitted == set()
    first.close()


def test_a_forged_admission_does_not_let_a_rank_in(store):
    """Whoever writes the verdict before rank 0 cannot admit anyone: an admission needs rank 0's tag over the
    joiner's fresh nonce."""
    client = store()
    client.set(JOIN + "challenge", json.dumps({"challenge": "00" * 16, "tag": "00" * 32}))  # no rank 0 at all
    out, thread = _try_join(store(), 1, timeout=10)
    _wait_for_requests(client, 1)
    client.set(JOIN + "verdict/0", json.dumps({"admitted": True, "reason": "", "tag": "00" * 32}))
    thread.join(10)
    assert "an admission without rank 0's tag" in out["refused"]


def _session(store, challenge=b"c" * 16, secret=SECRET):
    return SessionStore(store(), secret, challenge)


def test_a_session_store_refuses_what_was_not_written_with_the_secret_for_this_run(store):
    mine = _session(store)
    mine.set("share/out_dir", "/runs/q")
    assert mine.get("share/out_dir") == b"/runs/q"
    raw = store()
    name = mine.name("share/out_dir")
    assert "out_dir" not in name  # the names say nothing either

    raw.set(name, b"/tmp/attacker")  # an outsider that lists the keys and overwrites one
    with pytest.raises(TamperedValue, match="'share/out_dir' does not carry this run's tag"):
        mine.get("share/out_dir")
    mine.set("rec/0/1", "5")  # a value of this run moved to another key
    raw.set(name, raw.get(mine.name("rec/0/1")))
    with pytest.raises(TamperedValue):
        mine.get("share/out_dir")
    other_run = _session(store, challenge=b"d" * 16)  # the same secret, another run's challenge
    other_run.set("share/out_dir", "/runs/q")
    raw.set(name, raw.get(other_run.name("share/out_dir")))
    with pytest.raises(TamperedValue):
        mine.get("share/out_dir")
    # compare_set: the first authentic proposal wins, and what it returns is checked
    assert mine.compare_set("dec/0", "", "first") == b"first"
    assert mine.compare_set("dec/0", "", "second") == b"first"


def test_the_survivors_agreement_ignores_planted_and_forged_values(store):
    """A planted ``dec/`` key stopped a run that would have recovered; a forged heartbeat kept a dead rank
    'alive'. Now the plain key is not the run's, and a value without the tag proves nothing."""
    raw = store()
    raw.set("peerlearn/dec/0", json.dumps({"members": [1], "round": 0}))  # where the unsigned engine looked
    session = _session(store)
    alone = Membership(session, 0, 2, timeout_s=0.5)
    alone._stop.set()  # no heartbeat thread noise: rank 1 never beat
    raw.set(session.name("peerlearn/hb/1"), b"99" + b"\0" * 32)  # a forged beat for the dead rank 1
    members, departed, round_ = alone.recover(completed=3, max_wait_s=10)
    assert (members, departed, round_) == ([0], [1], 3)


def test_the_secret_comes_from_one_place_and_is_long_enough(tmp_path):
    key = tmp_path / "key"
    key.write_text("f" * 32 + "\n")
    assert read_secret(str(key), False, environ={}) == b"f" * 32
    assert read_secret(None, False, environ={"PEERLEARN_SECRET": "e" * 20}) == b"e" * 20
    assert read_secret(None, True, environ={}) == b""
    for args, environ, field in [((None, False), {}, "PEERLEARN_SECRET: a run launched by hand"),
                                 ((None, False), {"PEERLEARN_SECRET": "short"}, "at least 16 characters"),
                                 ((str(key), False), {"PEERLEARN_SECRET": "e" * 20}, "a secret file is given too"),
                                 ((None, True), {"PEERLEARN_SECRET": "e" * 20}, "--insecure: this rank also has"),
                                 ((str(tmp_path / "none"), False), {}, "--secret-file: cannot read")]:
        with pytest.raises(ConfigError, match=field) as err:
            read_secret(*args, environ=environ)
        assert "\n" not in str(err.value)


def test_join_returns_the_same_session_on_every_rank(store):
    """Rank 0 and a joiner end with stores that read each other's values (the same derived keys)."""
    results = {}

    def rank(r):
        session, keeper = join(store(), r, 2, SECRET, {**EXPECT, "world": 2}, 10.0, lambda m: None)
        results[r] = session
        if keeper:
            keeper.close()

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    results[0].set("x", "from rank 0")
    assert results[1].get("x") == b"from rank 0"
