"""Who is still in the run: gloo groups that can lose a member, heartbeats, and agreement after a failure.

gloo does not detect a dead peer: the ranks linked to it see a connection reset, every other rank
blocks until the group's timeout, and a blocked wait cannot be interrupted. So every operation of a
:class:`Group` runs under a short, configurable timeout and turns any backend error into
:class:`PeerFailure`. The engine then calls :meth:`Membership.recover`, which works through the
launch's key-value store (the ``torchrun`` agent's, or ``peerlearn run --nproc``'s), not gloo:

1. the rank reports the last round it completed under ``rec/<generation>/<rank>``;
2. it waits until every member has reported or is dead: a member is dead when its heartbeat
   counter (``hb/<rank>``, raised by a thread every ``timeout/5`` s) has not grown for ``timeout``;
3. it proposes (members that reported, the smallest completed round) with ``compare_set`` on
   ``dec/<generation>``: the first proposal wins and every rank adopts it, so all agree;
4. the members build a fresh gloo group under a new store prefix, and the engine rolls back to the
   agreed round and goes on without the departed ranks' nodes.

A rank that the decision leaves out (it stopped beating for ``timeout`` but was not dead) exits
with an error. Survivors finish within about one ``timeout`` plus the re-formation (1-2 s).

References:
    Birman, "The Process Group Approach to Reliable Distributed Computing", CACM 1993 (group
    membership with views agreed by the survivors).
    Aguilera, Chen and Toueg, "Heartbeat: A Timeout-Free Failure Detector for Quiescent Reliable
    Communication", WDAG 1997 (heartbeat failure detection).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import socket
import threading
import time

import torch
import torch.distributed as dist

from peerlearn.types import Tensor

# the per-call timeout of an all-gather is set through its options, which torch.distributed does not re-export
_AllgatherOptions = getattr(dist, "AllgatherOptions", None) or torch._C._distributed_c10d.AllgatherOptions


class PeerFailure(RuntimeError):
    """A group operation failed: a peer is gone (connection reset) or did not answer within the timeout."""


class RunStopped(RuntimeError):
    """This rank cannot go on: it was left out of the run, or the run lost what it cannot lose."""


class Group:
    """A gloo process group over ``members`` (launch ranks, ascending); ``rank``/``size`` are this
    process's place in it. Forming it waits at most ``connect_timeout_s`` (default ``timeout_s``: longer at
    start-up, when ranks are still loading); every operation waits at most ``timeout_s``, and every
    backend error, whether raised by starting an operation or by waiting for it, is a :class:`PeerFailure`."""

    def __init__(self, store, members: list[int], launch_rank: int, timeout_s: float, generation: int = 0,
                 connect_timeout_s: float | None = None):
        self.members, self.launch_rank, self.generation = list(members), launch_rank, generation
        self.rank, self.size = self.members.index(launch_rank), len(self.members)
        self.timeout = datetime.timedelta(seconds=timeout_s)
        connect = datetime.timedelta(seconds=max(timeout_s, connect_timeout_s or 0.0))
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout, opts._devices = connect, gloo_devices()
        try:
            self.pg = dist.ProcessGroupGloo(dist.PrefixStore(f"pg{generation}/", store), self.rank, self.size, opts)
        except RunStopped:  # a value in the store failed its tag (peerlearn.engines.join): not a peer failure
            raise
        except RuntimeError as err:  # a member died (or never came) before connecting
            raise PeerFailure(_first_sentence(str(err))) from err

    def _run(self, start) -> None:
        """Start the operations ``start()`` returns and wait for them, each at most the timeout."""
        try:
            for work in start():
                work.wait(self.timeout)
        except RuntimeError as err:
            raise PeerFailure(_first_sentence(str(err))) from err

    def _options(self, kind):
        opts = kind()
        opts.timeout = self.timeout
        return opts

    def all_reduce(self, t: Tensor) -> Tensor:
        """Sum over the members, in place (a GPU tensor goes through host memory: see :func:`on_host`)."""
        wire = on_host(t)
        self._run(lambda: [self.pg.allreduce([wire], self._options(dist.AllreduceOptions))])
        return t if wire is t else t.copy_(wire)

    def all_gather(self, t: Tensor) -> list[Tensor]:
        """Every member's ``t`` (equal shapes), in member order, on ``t``'s device."""
        wire = on_host(t)
        parts = [torch.empty_like(wire) for _ in range(self.size)]
        self._run(lambda: [self.pg.allgather([parts], [wire], self._options(_AllgatherOptions))])
        return parts if wire is t else [p.to(t.device) for p in parts]

    def exchange(self, send: dict[int, Tensor], recv: dict[int, Tensor]) -> None:
        """Point-to-point: send each ``send[q]`` to member ``q`` and fill each ``recv[q]`` from it."""
        inbox = {q: on_host(t) for q, t in recv.items()}
        self._run(lambda: [*(self.pg.send([on_host(t).contiguous()], q, 0) for q, t in send.items()),
                           *(self.pg.recv([t], q, 0) for q, t in inbox.items())])
        for q, t in recv.items():
            if inbox[q] is not t:
                t.copy_(inbox[q])

    def barrier(self) -> None:
        self._run(lambda: [self.pg.barrier(self._options(dist.BarrierOptions))])


def on_host(t: Tensor) -> Tensor:
    """``t`` itself on the CPU, else a host copy: the ranks' messages travel over gloo whatever device the
    ranks compute on. Membership, failure detection and recovery are the store's and gloo's on a GPU run as
    on a CPU run (NCCL cannot tell a dead peer from a slow one: its watchdog tears every rank down)."""
    return t if t.device.type == "cpu" else t.cpu()


def gloo_devices() -> list:
    """The network interface gloo listens on: those named by ``GLOO_SOCKET_IFNAME`` (comma-separated), else
    the address this host reaches ``MASTER_ADDR`` from (so that on a machine whose host name resolves to
    a loopback address, or in a network namespace, the peers can reach it), else gloo's default (the
    address of the host name)."""
    names = [n for n in os.environ.get("GLOO_SOCKET_IFNAME", "").split(",") if n]
    if names:
        return [dist.ProcessGroupGloo.create_device(interface=n) for n in names]
    master = os.environ.get("MASTER_ADDR")
    if master:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # no packet is sent
                probe.connect((master, int(os.environ.get("MASTER_PORT", "29500"))))
                return [dist.ProcessGroupGloo.create_device(hostname=probe.getsockname()[0])]
        except (OSError, ValueError):
            pass
    return [dist.ProcessGroupGloo.create_default_device()]


def _first_sentence(message: str) -> str:
    """gloo's message without its source location and advice: 'Connection reset by peer', 'Timed out ...'."""
    message = re.sub(r"^\[[^\]]*\]\s*", "", message.splitlines()[0] if message else "")
    return message.split(". ")[0]


def connect_store(timeout_s: float):
    """The launch's key-value store, from the ``torch.distributed`` environment (``MASTER_ADDR``,
    ``MASTER_PORT``): a client of the launcher's store (torchrun's agent, or ``peerlearn run --nproc``);
    rank 0 hosts it when the launcher does not (plain ``env://`` launches), on the loopback interface
    only when ``MASTER_ADDR`` is a loopback address (else on every interface: the other machines must
    reach it)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"])
    timeout = datetime.timedelta(seconds=timeout_s)
    if not agent and rank == 0 and _is_loopback(host):
        return loopback_store(port, timeout)
    return dist.TCPStore(host, port, world, not agent and rank == 0, timeout, wait_for_workers=False)


def loopback_store(port: int, timeout: datetime.timedelta):
    """A TCPStore server that listens on 127.0.0.1 only (``port`` 0: any free one). Given only a port, a
    TCPStore listens on every interface, where anyone who reaches it reads and writes every key: it is
    handed a socket already bound to the loopback interface instead."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    port = listener.getsockname()[1]
    return dist.TCPStore("127.0.0.1", port, None, True, timeout, wait_for_workers=False,
                         master_listen_fd=listener.detach())  # the store owns the socket from here


def _is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, socket.AF_INET))
    except (OSError, ValueError):
        return False


class Membership:
    """This process's view of the run's members, kept through the launch's store (see the module doc).

    Args:
        store: the launch's store; keys live under ``prefix``.
        rank, world: this process's launch rank and the launch's size.
        timeout_s: how long a silent peer or a blocked operation is waited for.
        startup_timeout_s: how long the first group waits for every rank to arrive (at least ``timeout_s``):
            ranks start at different times and load their data first.
        keeper: on rank 0, the :class:`~peerlearn.engines.join.Doorkeeper` that admitted the ranks.
    """

    def __init__(self, store, rank: int, world: int, timeout_s: float, prefix: str = "peerlearn",
                 startup_timeout_s: float = 0.0, keeper=None):
        self.store = dist.PrefixStore(f"{prefix}/", store)
        self.base = store  # a store written in Python lives only while Python holds it: the prefix store does not
        self.keeper = keeper  # rank 0's doorkeeper (peerlearn.engines.join), closed with the membership
        self.rank, self.timeout_s = rank, float(timeout_s)
        self.startup_timeout_s = max(float(startup_timeout_s), self.timeout_s)
        self.members = list(range(world))
        self.generation = 0
        self._stop = threading.Event()
        self._interval = min(1.0, self.timeout_s / 5)
        self._beats = 1
        self.store.set(f"hb/{rank}", "1")  # a counter that only grows: an old value replayed is no beat
        self._beat = threading.Thread(target=self._heartbeat, name="peerlearn-heartbeat", daemon=True)
        self._beat.start()
        self._old_groups: list[Group] = []  # failed groups stay referenced: tearing one down can block

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._interval):
            self._beats += 1
            try:
                self.store.set(f"hb/{self.rank}", str(self._beats))
            except Exception:  # the store is gone (the launch is ending): nothing left to tell
                return

    def close(self) -> None:
        self._stop.set()
        if self.keeper is not None:
            self.keeper.close()

    def _beats_of(self, member: int, last: int) -> int:
        """``member``'s heartbeat count; ``last`` when it never beat or its value fails its tag."""
        try:
            if self.store.check([f"hb/{member}"]):
                return max(last, int(self.store.get(f"hb/{member}")))
        except (RunStopped, ValueError):  # not this run's value: it proves nothing
            pass
        return last

    def group(self) -> Group:
        """A gloo group over the current members (built collectively by all of them; the first one waits
        up to the start-up timeout for every rank to arrive)."""
        return Group(self.store, self.members, self.rank, self.timeout_s, self.generation,
                     self.startup_timeout_s if self.generation == 0 else None)

    def share(self, key: str, value: str | None = None) -> str:
        """Rank ``members[0]`` publishes ``value`` under ``key``; every member returns it."""
        if self.rank == self.members[0]:
            self.store.set(f"share/{key}", value)
        return self.store.get(f"share/{key}").decode()

    def recover(self, completed: int, failed: Group | None = None, max_wait_s: float | None = None
                ) -> tuple[list[int], list[int], int]:
        """Agree with the survivors after a :class:`PeerFailure`: returns (members, departed, round),
        where ``round`` is the last round every member completed (the run continues after it).

        Raises RunStopped when the agreed members leave this rank out, or when a live member does
        not report within ``max_wait_s`` (default: ten timeouts).
        """
        if failed is not None:
            self._old_groups.append(failed)
        g = self.generation
        self.store.set(f"rec/{g}/{self.rank}", str(completed))
        decision_key = f"dec/{g}"
        patience = 10 * self.timeout_s if max_wait_s is None else max_wait_s
        deadline = time.monotonic() + patience
        seen: dict[int, tuple[int, float]] = {}  # member -> (heartbeat count, when it last changed)
        while not self.store.check([decision_key]):
            reported, dead = {}, []
            for m in self.members:
                if self.store.check([f"rec/{g}/{m}"]):
                    reported[m] = int(self.store.get(f"rec/{g}/{m}"))
                    continue
                beats, now = self._beats_of(m, seen[m][0] if m in seen else 0), time.monotonic()
                if m not in seen or seen[m][0] != beats:
                    seen[m] = (beats, now)
                elif now - seen[m][1] >= self.timeout_s:
                    dead.append(m)
            if len(reported) + len(dead) == len(self.members):
                proposal = {"members": sorted(reported), "round": min(reported.values())}
                self.store.compare_set(decision_key, "", json.dumps(proposal))
                break
            if time.monotonic() > deadline:
                waiting = sorted(set(self.members) - set(reported) - set(dead))
                raise RunStopped(f"ranks {waiting} are alive but did not report within {patience:g} s")
            time.sleep(0.05)
        decision = json.loads(self.store.get(decision_key))
        departed = sorted(set(self.members) - set(decision["members"]))
        if self.rank not in decision["members"]:
            raise RunStopped(f"rank {self.rank} was left out of the run at generation {g} "
                               f"(silent for {self.timeout_s:g} s); raise --timeout-s if it was only slow")
        self.members, self.generation = decision["members"], g + 1
        return self.members, departed, int(decision["round"])
