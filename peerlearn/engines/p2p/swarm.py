"""A peer's place in the swarm: hivemind's DHT and libp2p streams, admission, the roster and the inbox.

Built on hivemind (Ryabinin et al., "Towards Crowdsourced Training of Large Neural Networks using
Decentralized Mixture-of-Experts", NeurIPS 2020; the library's DHT is Kademlia, Maymounkov and Mazieres,
IPTPS 2002) and its libp2p daemon: channels are encrypted and every stream's remote peer id is the
public key that opened it, so a peer cannot pretend to be another.

- **Admission** (:class:`Admission`): a peer is admitted when it proves the swarm's secret *for its own
  peer id* (an HMAC of the run and the peer id: useless to anyone else, whom libp2p would not let speak
  under that id), or when its id is on the allow-list. Model messages from anyone else are refused and
  counted; roster records that fail their proof are ignored.
- **The roster**: every peer stores ``{index, nodes, proof}`` under the run's DHT key, subkey its peer id,
  with an expiration it renews (a heartbeat); a peer that stops renewing falls out of it.
- **Messages**: one libp2p stream per message: a JSON header frame (run, proof, round, exchange, node ids,
  shape, dtype), then the rows as raw little-endian floats. A received message is read as data: its header
  is checked against what this run expects (the number of parameters, a float dtype, the sizes) before a
  byte of it becomes a tensor; nothing is unpickled. The receiver answers each message with one byte: kept
  or refused. A message is delivered once it is kept: a stream that fails before (a reset, a peer not yet
  reachable) is opened again until the exchange's deadline, and a peer that leaves waits for its sends
  under way first (without the answer, a peer's last messages died with its daemon).

The asyncio side runs on one background thread; the engine's thread calls :meth:`Swarm.call`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

PROTOCOL = "peerlearn.model.v2"  # v2: every message is acknowledged
ACK, NAK = b"\x01", b"\x00"  # the receiver's answer: kept, or refused
MAX_HEADER_BYTES = 1 << 20
LOOKAHEAD = 64  # rounds ahead of this peer that a message may be for (a peer none of whose nodes listens to
# another peer this round runs ahead, e.g. on a time-varying topology); later ones are dropped as early


class Admission:
    """Who may exchange models in run ``run_id``: peers that prove ``secret`` for their own peer id, and the
    peer ids in ``allowed`` (either may be empty; both empty admits everyone: ``--insecure``)."""

    def __init__(self, run_id: str, secret: bytes | None, allowed: set[str] | None = None):
        self.run_id, self.secret, self.allowed = run_id, secret, set(allowed or ())
        self.refused: set[str] = set()

    @property
    def open(self) -> bool:
        return not self.secret and not self.allowed

    def proof(self, peer_id: str) -> str:
        if not self.secret:
            return ""
        return hmac.new(self.secret, f"peerlearn-p2p\0{self.run_id}\0{peer_id}".encode(), hashlib.sha256).hexdigest()

    def admits(self, peer_id: str, proof: str) -> bool:
        if self.open or peer_id in self.allowed:
            return True
        ok = bool(self.secret) and isinstance(proof, str) and hmac.compare_digest(proof, self.proof(peer_id))
        if not ok:
            self.refused.add(peer_id)
        return ok


@dataclass
class Inbox:
    """Rows received, by exchange ``(round, call)`` and sender node; waited on by the engine's thread."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    rows: dict = field(default_factory=dict)  # (round, call) -> {node: tensor row}
    senders: dict = field(default_factory=dict)  # (round, call) -> {peer id}
    oldest: tuple = (0, 0)  # exchanges before this one are over: what arrives for them is late
    late: int = 0
    early: int = 0
    bytes_received: int = 0
    departed: dict = field(default_factory=dict)  # peer id -> the first exchange it is no longer in (it left)

    def put(self, key: tuple, peer: str, nodes: list[int], rows: torch.Tensor, size: int, bye: bool = False) -> None:
        with self.cond:
            self.bytes_received += size
            if bye:  # the peer left: from exchange ``key`` on, nobody waits for it
                self.departed[peer] = key
                self.cond.notify_all()
                return
            if key < self.oldest:
                self.late += 1
                return
            if key[0] > self.oldest[0] + LOOKAHEAD:  # a flood of far-future rounds is dropped, not kept
                self.early += 1
                return
            box = self.rows.setdefault(key, {})
            for node, row in zip(nodes, rows):
                box[node] = row
            self.senders.setdefault(key, set()).add(peer)
            self.cond.notify_all()

    def wait(self, key: tuple, peers: set[str], deadline: float) -> tuple[dict, set[str]]:
        """The rows of exchange ``key`` once every peer of ``peers`` sent, or at ``deadline``; and who sent."""
        with self.cond:
            while not peers - {p for p, k in self.departed.items() if k <= key} <= self.senders.get(key, set()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            self.oldest = key
            for old in [k for k in self.rows if k < key]:
                del self.rows[old]
                self.senders.pop(old, None)
            return dict(self.rows.get(key, {})), set(self.senders.get(key, set()))


@dataclass
class Mailbox:
    """Models sent to one of this peer's nodes by an asynchronous algorithm: ``(to, from, age, row)`` in order of
    arrival, taken by the engine's thread."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    items: list = field(default_factory=list)
    bytes_received: int = 0

    def put(self, item: tuple, size: int) -> None:
        with self.cond:
            self.items.append(item)
            self.bytes_received += size
            self.cond.notify_all()

    def take(self, until: float) -> list:
        """Everything that came, waiting until ``until`` (a monotonic time) for the first message."""
        with self.cond:
            while not self.items:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            out, self.items = self.items, []
            return out


def encode(header: dict, rows: torch.Tensor) -> tuple[bytes, bytes]:
    """The two frames of a message: the JSON header and the rows' bytes (float32, little-endian)."""
    data = rows.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
    return json.dumps({**header, "shape": list(rows.shape), "dtype": "float32"}).encode(), data


def decode(head: bytes, data: bytes, num_params: int, max_rows: int) -> tuple[dict, torch.Tensor]:
    """A message read as data: ``ValueError`` unless its header is what this run sends (rows of at most
    ``num_params`` values, the widest row of the run's algorithm (the model's P, or a distiller's predictions),
    and two more: a push-sum weight, or a collective's weight sum and count)."""
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError("header too large")
    header = json.loads(head.decode())
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    shape, nodes = header.get("shape"), header.get("nodes")
    if (header.get("dtype") != "float32" or not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(s, int) for s in shape) or not 0 < shape[1] <= num_params + 2
            or not 0 <= shape[0] <= max_rows
            or not isinstance(nodes, list) or len(nodes) != shape[0] or not all(isinstance(n, int) for n in nodes)
            or not isinstance(header.get("round"), int) or not isinstance(header.get("call"), int)):
        raise ValueError("header does not describe this run's rows")
    if len(data) != 4 * shape[0] * shape[1]:
        raise ValueError("payload size does not match the header")
    if "to" in header:  # a model for one node (asynchronous algorithms): its receiver and its age
        to, age = header["to"], header.get("age")
        if (not isinstance(to, int) or not 0 <= to < max_rows or not isinstance(age, (int, float))
                or not np.isfinite(age) or age < 0 or shape[0] != 1):
            raise ValueError("header does not describe a model for one node")
    rows = torch.from_numpy(np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(shape))
    if not bool(torch.isfinite(rows).all()):
        raise ValueError("non-finite values")
    return header, rows


class Swarm:
    """This peer in the swarm (see the module doc).

    Args:
        run_id: the run's id (a digest of its config: peers of another config never meet).
        admission: who may exchange models.
        num_params, max_rows: what a valid message holds (rows of at most P values, or the algorithm's
            ``message_values``; at most every node).
        initial_peers: multiaddrs of any live peer (none: this peer starts the swarm).
        host_maddrs: where to listen (default 127.0.0.1, a free port).
        identity_path: a private key file (a stable peer id); default a fresh identity.
    """

    def __init__(self, run_id: str, admission: Admission, num_params: int, max_rows: int,
                 initial_peers: list[str] | None = None, host_maddrs: list[str] | None = None,
                 identity_path: str | None = None, startup_timeout_s: float = 60.0):
        from hivemind.dht.node import DHTNode
        from hivemind.utils.logging import use_hivemind_log_handler

        use_hivemind_log_handler("nowhere")
        self.run_id, self.admission = run_id, admission
        self.num_params, self.max_rows = num_params, max_rows
        self.inbox = Inbox()
        self.mailbox = Mailbox()
        self.refused_messages = 0
        self.heard: dict[str, float] = {}  # peer id -> when (time.monotonic) its last admitted message came
        self.unsent: dict[str, int] = {}  # why messages this peer sent were not delivered: reason -> count
        self._pending: set = set()  # sends under way (futures of send_soon)
        self.payload_sent = self.overhead_sent = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="peerlearn-p2p", daemon=True)
        self._thread.start()
        # the DHT node runs on this process's loop (not in a child process, which would outlive a peer killed
        # with SIGKILL); its libp2p daemon exits by itself when this process is gone
        kwargs = {"identity_path": identity_path} if identity_path else {}
        self.node = self.call(DHTNode.create(initial_peers=initial_peers or None,
                                             host_maddrs=host_maddrs or ["/ip4/127.0.0.1/tcp/0"],
                                             startup_timeout=startup_timeout_s, **kwargs), startup_timeout_s + 30)
        self.p2p = self.node.p2p
        self.peer_id = str(self.node.peer_id)
        self.call(self.p2p.add_binary_stream_handler(PROTOCOL, self._receive), 60.0)
        self._roster_key = f"peerlearn:{run_id}:roster"
        self._entry: dict | None = None
        self._beating = False
        self._stop = threading.Event()

    # -- plumbing --------------------------------------------------------------------------------
    def call(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def maddrs(self) -> list[str]:
        return [str(m) for m in self.call(self.node.get_visible_maddrs(), 30.0)]

    # -- the roster ------------------------------------------------------------------------------
    def announce(self, entry: dict, ttl_s: float) -> None:
        """Put this peer in the roster (``entry``: its index and nodes) and keep it there every ``ttl_s / 3``."""
        self._entry, self._ttl = {**entry, "proof": self.admission.proof(self.peer_id)}, ttl_s
        self._store(ttl_s)
        if not self._beating:
            self._beating = True
            threading.Thread(target=self._heartbeat, name="peerlearn-p2p-heartbeat", daemon=True).start()

    def _store(self, ttl_s: float) -> None:
        from hivemind.utils import get_dht_time

        self.call(self.node.store(self._roster_key, self._entry, get_dht_time() + ttl_s, subkey=self.peer_id), 30.0)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            try:
                self._store(self._ttl)
            except Exception:  # the DHT is shutting down, or a hiccup: the next beat tries again
                pass

    def leave(self, peers: list[str], round_: int, width: int, timeout_s: float) -> None:
        """Leave the swarm cleanly after round ``round_ - 1``: the roster record says so, and each of ``peers`` is
        told (a message of no rows, ``bye``) that this peer is in no exchange from round ``round_`` on, so
        nobody waits for it; returns once they have been told (or ``timeout_s`` passed)."""
        self._entry = {**self._entry, "left": True}
        self._store(self._ttl)
        bye = {"round": round_, "call": 0, "nodes": [], "bye": True}
        self.send_soon({p: (bye, torch.zeros(0, width)) for p in peers if p != self.peer_id}, timeout_s).result(
            timeout_s + 5)

    def roster(self, with_left: bool = False) -> dict[str, dict]:
        """The admitted peers that are alive (their records unexpired), by peer id; those that left cleanly only
        ``with_left`` (their records say ``left``)."""
        found = self.call(self.node.get(self._roster_key, latest=True), 30.0)
        out = {}
        if found is None or not isinstance(found.value, dict):
            return out
        for peer, item in found.value.items():
            entry = getattr(item, "value", None)
            if isinstance(entry, dict) and isinstance(peer, str) and self.admission.admits(peer, entry.get("proof", "")):
                if with_left or not entry.get("left"):
                    out[peer] = entry
        return out

    # -- messages --------------------------------------------------------------------------------
    def send_soon(self, targets: dict[str, tuple[dict, torch.Tensor]], timeout_s: float):
        """Send ``header, rows`` to each peer id of ``targets``, without waiting: the rows are encoded now (the
        caller may change them next), the sends run on the swarm's loop. A message is delivered when its
        receiver acknowledges it (it has read and kept it); a stream that fails before that is opened again
        until ``timeout_s`` has passed, then the message is dropped (and why is counted in :attr:`unsent`).
        Returns the future of the set of peers reached; :meth:`close` waits for the sends still under way."""
        proof = self.admission.proof(self.peer_id)
        frames = {peer: encode({**header, "run": self.run_id, "proof": proof}, rows)
                  for peer, (header, rows) in targets.items()}

        async def every():
            sends = (self._deliver(p, h, d, time.monotonic() + timeout_s) for p, (h, d) in frames.items())
            return {p for p in await asyncio.gather(*sends) if p}

        future = asyncio.run_coroutine_threadsafe(every(), self.loop)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    async def _deliver(self, peer: str, head: bytes, data: bytes, deadline: float) -> str | None:
        """One message to ``peer``, acknowledged, retried until ``deadline``: the peer id, or None if dropped."""
        from hivemind.p2p import PeerID

        async def attempt() -> bytes:
            _, reader, writer = await self.p2p.call_binary_stream_handler(PeerID.from_base58(peer), PROTOCOL)
            try:
                await self.p2p.send_raw_data(head, writer)
                await self.p2p.send_raw_data(data, writer)
                return await reader.readexactly(1)
            finally:
                writer.close()

        pause, why = 0.05, "no time left"
        while (left := deadline - time.monotonic()) > 0:
            try:
                answer = await asyncio.wait_for(attempt(), left)
            except Exception as e:  # not delivered (a stream reset, a peer not reached yet, too slow): again
                why = f"{type(e).__name__}: {e}"[:200] or type(e).__name__
                await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(2 * pause, 1.0)
                continue
            if answer == ACK:
                self.payload_sent += len(data)
                self.overhead_sent += len(head) + 17  # the header, two 8-byte length prefixes, the acknowledgement
                return peer
            why = "refused by the receiver"  # not admitted or not this run's rows: sending again changes nothing
            break
        self.unsent[why] = self.unsent.get(why, 0) + 1
        return None

    async def _receive(self, info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from hivemind.p2p import P2P

        peer = str(info.peer_id)
        answer = NAK
        try:
            head = await P2P.receive_raw_data(reader)
            if len(head) > MAX_HEADER_BYTES:
                raise ValueError("header too large")
            claimed = json.loads(head.decode())
            if (not isinstance(claimed, dict) or claimed.get("run") != self.run_id
                    or not self.admission.admits(peer, claimed.get("proof", ""))):
                raise ValueError("not admitted")
            data = await P2P.receive_raw_data(reader)
            header, rows = decode(head, data, self.num_params, self.max_rows)
            size = len(head) + len(data) + 16
            self.heard[peer] = time.monotonic()
            if header.get("bye") is True:
                self.inbox.put((header["round"], header["call"]), peer, [], rows, size, bye=True)
            elif "to" in header:
                self.mailbox.put((header["to"], header["nodes"][0], float(header["age"]), rows[0]), size)
            else:
                self.inbox.put((header["round"], header["call"]), peer, header["nodes"], rows, size)
            answer = ACK
        except (asyncio.IncompleteReadError, ConnectionError):  # a stream cut short: its sender sends it again
            answer = None
        except Exception:  # a malformed or unadmitted message is refused, never raised into the daemon's loop
            self.refused_messages += 1
        try:
            if answer is not None:
                writer.write(answer)
                await writer.drain()
        except Exception:  # the sender is gone
            pass
        finally:
            writer.close()

    def close(self, linger_s: float = 60.0) -> None:
        """Leave: let the sends under way end (delivered, or dropped at their deadline; at most ``linger_s``),
        stop the heartbeat, shut the DHT node and its daemon down, end the loop's tasks."""
        import concurrent.futures

        if self._pending:
            concurrent.futures.wait(list(self._pending), timeout=linger_s)
        self._stop.set()

        async def down():
            await self.node.shutdown()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            self.call(down(), 10.0)
        except Exception:  # already gone
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
