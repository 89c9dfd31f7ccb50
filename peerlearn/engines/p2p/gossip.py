"""Asynchronous algorithms on a swarm (gossip learning, asynchronous push-sum and local SGD), on wall-clock time: a
:func:`~peerlearn.engines.loop.run_rounds` driver whose round is one timer period of real time.

Every node of the peer wakes on its own timer (period ``algorithm.period_s``, default 0.1 s; first wake-ups
spread over the first period). Under gossip learning a waking node sends its model and age to a random
out-neighbour whose peer is in the roster, and a peer takes in the models that come for its nodes as they
come (the algorithm's ``receive``: merge by age, then train). Under asynchronous push-sum and local SGD the
waking nodes train and push (mass, or pseudo-gradients to every peer's replica of the server) through :class:`~peerlearn.engines.p2p.async_net.SwarmAsyncNet` (the algorithm's
``wake``, as in the event engine); what comes is taken in at the next wake. A node wakes once per period,
so after ``num_rounds`` periods every node made as many exchanges as in the event engine's run of the same
config with the same ``period_s``. Peers that join later align their rounds to the swarm's clock (the
earliest start in the roster) and start from what they receive (gossip learning: age 0, so the first
model that comes replaces theirs).

References:
    Assran & Rabbat, "Asynchronous Gradient Push", IEEE Trans. Automatic Control 2021;
    Ormándi, Hegedűs & Jelasity, "Gossip Learning with Linear Models on Fully Distributed Data",
    Concurrency and Computation 2013; Hegedűs, Danner & Jelasity, "Decentralized Learning Works: An
    Empirical Comparison of Gossip Learning and Federated Learning", JPDC 2021.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch

from peerlearn.engines.dist_comm import RowBatches
from peerlearn.engines.p2p.async_net import SwarmAsyncNet
from peerlearn.engines.p2p.churn import churn_point
from peerlearn.topology.clique import as_csr
from peerlearn.types import Tensor

DEFAULT_PERIOD_S = 0.1
SEND_TIMEOUT_S = 2.0  # a model not delivered by then is dropped (gossip learning does without it; a peer
# that left, or finished before this one, is not tried for long)


class GossipPeer:
    """One peer's nodes under an asynchronous algorithm (see the module doc)."""

    def __init__(self, built, swarm, rows: Tensor, view, book, roster: dict, swarm_start: float, joining: bool,
                 plan: dict[str, int] | None = None):
        """``swarm_start``: the swarm's first peer's start (``time.time()``), the clock every peer's rounds follow;
        ``joining``: the swarm was running before this peer came (it starts at the swarm's current round)."""
        cfg = built.config
        self.built, self.swarm, self.rows, self.view, self.book = built, swarm, rows, view, book
        self.lo, self.hi = int(rows[0]), int(rows[-1]) + 1
        self.period = cfg.algorithm.period_s or DEFAULT_PERIOD_S
        elapsed = time.time() - swarm_start
        self.start = time.monotonic() - elapsed
        self.plan = plan or {}  # churn: a join, a leave or a crash at a round
        late = self.plan.get("join", int(elapsed / self.period))  # a planned join starts at its round (catching up)
        self.join_round = min(late, cfg.num_rounds - 1) if joining else 0
        self.algorithm = built.algorithm
        self.batches = RowBatches(built.batches, rows)
        self.params_RP = built.params_NP[rows].clone()
        self.state = self.algorithm.init(self.params_RP)
        csc = sp.csc_array(as_csr(built.W))  # column j: whom node j sends to
        self.out = [csc.indices[csc.indptr[j]:csc.indptr[j + 1]] for j in range(self.lo, self.hi)]
        self.out = [o[o != j] for o, j in zip(self.out, range(self.lo, self.hi))]
        self.rng = np.random.default_rng([cfg.seed, self.lo, 7])
        now = time.monotonic()
        # first wake-ups as in the event engine: spread over the first period for a timer (gossip learning), all
        # at the start for an algorithm that wakes again when its work is done (push-sum, local SGD)
        first = self.rng.uniform(0.0, self.period, len(rows)) if self.algorithm.timer else np.zeros(len(rows))
        self.due = now + first
        self.bytes_sent_N = torch.zeros(len(rows), dtype=torch.float64)
        self.sent = self.received = self.unreachable = 0
        self.set_roster(roster)
        self.roster_at = now
        # gossip learning sends a model and merges what comes (algorithm.receive); asynchronous push-sum and
        # local SGD push through a net when their nodes wake (algorithm.wake)
        self.net = SwarmAsyncNet(self, built.W, SEND_TIMEOUT_S) if self.algorithm.receive is None else None

    def set_roster(self, roster: dict) -> None:
        self.roster = dict(roster)
        self.host = np.full(self.built.config.num_nodes, -1, dtype=np.int64)
        self.peers = sorted(roster)
        for q, peer in enumerate(self.peers):
            first, end = roster[peer]["nodes"]
            self.host[first:end] = q

    # -- the run_rounds driver -----------------------------------------------------------------------
    def models(self) -> Tensor:
        return self.params_RP

    def resume(self, snapshot: dict) -> int:
        """A peer that joins a running swarm: its first row is the swarm's current round."""
        self.record(self.join_round)
        return self.join_round

    def record(self, round_: int) -> None:
        s = self.swarm
        more = {"peers_seen": len(self.roster), "messages_sent": self.sent, "messages_received": self.received,
                "unreachable_sends": self.unreachable,
                "unsent_messages": sum(s.unsent.values()), "refused_messages": s.refused_messages,
                "refused_peers": len(s.admission.refused), "payload_bytes_sent": s.payload_sent,
                "overhead_bytes_sent": s.overhead_sent, "bytes_received": s.mailbox.bytes_received}
        server = 0.0 if self.net is None else self.net.bytes_sent_server
        self.book.record(round_, self.params_RP, None, float(self.bytes_sent_N.sum()) + server, {}, more)

    def advance(self, round_: int) -> None:
        """Real time until the end of period ``round_``: wake-ups and sends, and every model that comes."""
        churn_point(self.plan, round_, self.book, self.record, self._leave)
        end = self.start + round_ * self.period
        while True:
            now = time.monotonic()
            # the roster again every 2 s, at once when a peer left (its bye), and within 0.25 s when a peer not in
            # it sent a model since the last look (a joiner: known by its first message, not up to 2 s later)
            stranger = now - self.roster_at > 0.25 and any(
                t > self.roster_at for p, t in list(self.swarm.heard.items()) if p not in self.roster)
            if now - self.roster_at > 2.0 or stranger or set(self.swarm.inbox.departed) & set(self.roster):
                departed = self.swarm.inbox.departed
                self.set_roster({p: e for p, e in self.swarm.roster().items() if p not in departed})
                self.roster_at = now
            due = np.flatnonzero(self.due <= now)
            if self.net is not None and len(due):  # push-sum, local SGD: the due nodes train and push
                self.params_RP, self.state, metrics = self.algorithm.wake(self.state, self.params_RP, due,
                                                                          self.batches, self.built.grad_fn, self.net)
                self.book.step(round_, metrics)
            for i in due:
                if self.net is None:
                    self._send(int(i))
                self.due[i] += self.period
            if now >= end:
                break
            self._take(self.swarm.mailbox.take(min(end, float(self.due.min()))), round_)
        self._take(self.swarm.mailbox.take(time.monotonic()), round_)

    def _leave(self, round_: int) -> None:
        self.swarm.leave(self.peers, round_, self.params_RP.shape[1], SEND_TIMEOUT_S)

    # -- messages ------------------------------------------------------------------------------------
    def _send(self, i: int) -> None:
        live = [j for j in self.out[i] if self.host[j] >= 0]
        if not live:
            self.unreachable += 1
            return
        j = int(self.rng.choice(live))
        size = (self.params_RP.shape[1] + 1) * self.params_RP.element_size()  # the model and its age
        self.bytes_sent_N[i] += size
        age = float(self.state.age_N[i])
        if self.lo <= j < self.hi:  # a neighbour on this peer: delivered here
            self.sent += 1
            self.swarm.mailbox.put((j, self.lo + i, age, self.params_RP[i].clone()), 0)
            return
        self.post(j, i, self.params_RP[i:i + 1], age, SEND_TIMEOUT_S)

    def post(self, to: int, i: int, row_1P: Tensor, age: float, timeout_s: float) -> None:
        """Send ``row_1P`` from local node ``i`` to node ``to`` of another peer (not sent, and counted as
        unreachable, when that peer is not in the roster)."""
        if self.host[to] < 0:
            self.unreachable += 1
            return
        self.sent += 1
        header = {"round": 0, "call": 0, "nodes": [self.lo + i], "to": to, "age": age}
        self.swarm.send_soon({self.peers[self.host[to]]: (header, row_1P)}, timeout_s)

    def _take(self, items: list, round_: int) -> None:
        """The models that came, in order; a receiver takes one per batch (the next batch takes the rest)."""
        if self.net is not None:  # push-sum mass, pushes for the server's replica: taken in at the next wake
            self.received += self.net.arrive(items)
            return
        while items:
            first, rest, seen = [], [], set()
            for item in items:
                to = item[0]
                if not self.lo <= to < self.hi:  # not one of ours (a stale roster elsewhere)
                    continue
                (rest if to in seen else first).append(item)
                seen.add(to)
            if not first:
                return
            r = torch.tensor([to - self.lo for to, _, _, _ in first])
            x = torch.stack([row.to(self.params_RP) for _, _, _, row in first])
            age = torch.tensor([a for _, _, a, _ in first], dtype=torch.float64)
            self.params_RP, self.state, metrics = self.algorithm.receive(self.state, self.params_RP, r, x, age,
                                                                         self.batches, self.built.grad_fn)
            self.received += len(first)
            self.book.step(round_, metrics)
            items = rest


def wait_for_round(swarm, built, round_: int, timeout_s: float, say) -> None:
    """Until the running swarm's clock (its first peer's start, in the roster) reaches ``round_`` of its periods:
    a peer whose churn scenario has it join then (it is not in the roster meanwhile)."""
    period = built.config.algorithm.period_s or DEFAULT_PERIOD_S
    deadline = time.monotonic() + timeout_s
    while True:
        started = [e["started"] for e in swarm.roster().values() if isinstance(e.get("started"), (int, float))]
        if started:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the swarm did not start within {timeout_s:g} s")
        time.sleep(0.2)
    wait = min(started) + round_ * period - time.time()
    say(f"joining the swarm at its round {round_}, in {max(wait, 0.0):.1f} s")
    time.sleep(max(wait, 0.0))
