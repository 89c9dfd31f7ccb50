"""Who may join a distributed run: a shared secret, a fresh challenge and the same config.

``torch.distributed``'s TCPStore authenticates nobody: any process that reaches its port can read,
write and list every key, so without more, a stranger could join a run as a rank, copy every model
and poison the rest, or steer the survivors' agreement after a failure. peerlearn therefore admits
ranks itself, and signs everything it keeps in the store:

1. rank 0 draws a fresh 16-byte challenge ``N`` and publishes it (with its tag) under
   ``peerlearn/join/challenge``;
2. every other rank draws a nonce ``n``, takes a ticket ``i`` (``add``) and writes its request under
   ``peerlearn/join/req/<i>``: its rank, the world size, peerlearn's version, the hash of its resolved
   config, ``N`` and ``n``, and ``HMAC(S, N, i, rank, world, version, config, n)``, the proof that it
   holds the secret ``S`` for *this* run's challenge;
3. rank 0 (its doorkeeper thread, for the whole run) answers each ticket under
   ``peerlearn/join/verdict/<i>``: admitted, or refused with the cause (no proof, a proof for another
   challenge (a replay), a wrong proof, another config, version or world size, a rank already in, or
   the run already started), tagged with ``HMAC(S, N, i, n, verdict)``; every refusal is one line
   on rank 0's stderr, and the run goes on;
4. rank 0 and the admitted ranks then see the store through a :class:`SessionStore`: every key renamed
   by an HMAC and every value tagged with one, under keys derived from ``S`` and ``N``. A value
   nobody holding the secret wrote for this run, a value replayed from another run or moved to
   another key, fails its tag and is refused (:class:`TamperedValue`).

A rank trusts an admission only when its tag proves rank 0 holds ``S`` and saw this rank's nonce; a
refusal is believed as it stands (whoever can forge one could as well stop the run by deleting keys).
What the secret does not do, and the docs say so: the store stays reachable, so a stranger can still
stop a run (delete or overwrite keys: a tampered value stops it with one line rather than being
believed), and gloo's own traffic between ranks (the models) is neither encrypted nor authenticated:
across a network you do not control, run the ranks over a private network (WireGuard, an SSH tunnel).
Without a secret (``--insecure``) the same protocol runs with an empty key: ranks are checked for the
same config, nothing is authenticated.

References:
    Bellare, Canetti and Krawczyk, "Keying Hash Functions for Message Authentication", CRYPTO 1996 (HMAC).
    Bird et al., "Systematic Design of Two-Party Authentication Protocols", CRYPTO 1991 (challenge-response
    with fresh nonces against replay).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import torch.distributed as dist

from peerlearn.engines.membership import RunStopped
from peerlearn.spec import ConfigError

JOIN = "peerlearn/join/"
TAG = 32  # bytes of HMAC-SHA256 appended to every value of a session
MIN_SECRET = 16  # characters: a guessable secret protects nothing
MAX_REFUSAL_LINES = 20  # rank 0 names the first refused joins; a flood of them is counted, not printed
GENERATE = "generate one with `python -c 'import secrets; print(secrets.token_hex(16))'`"


class TamperedValue(RunStopped):
    """A value in the store did not carry this run's tag: someone without the secret wrote it."""


class JoinRefused(RunStopped):
    """Rank 0 refused this rank, or this rank could not join within the start-up timeout."""


def _mac(key: bytes, *parts) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:  # length-prefixed: no two different part lists hash alike
        data = part if isinstance(part, bytes) else str(part).encode()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.digest()


def read_secret(secret_file: str | None, insecure: bool, environ=os.environ) -> bytes:
    """The run's shared secret: ``--secret-file`` (or ``PEERLEARN_SECRET_FILE``), else ``PEERLEARN_SECRET``;
    empty with ``--insecure``. A ConfigError naming the source when it is missing, too short or given twice."""
    path = secret_file or environ.get("PEERLEARN_SECRET_FILE")
    value = environ.get("PEERLEARN_SECRET")
    if insecure:
        if path or value:
            raise ConfigError("config error: --insecure: this rank also has a secret (PEERLEARN_SECRET or a secret "
                              "file): give every rank the secret, or none of them and --insecure")
        return b""
    if path and value:
        raise ConfigError("config error: PEERLEARN_SECRET: a secret file is given too; use one of them")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config error: --secret-file: cannot read {path}: {err}") from None
        source = f"the secret file {path}"
    else:
        source = "PEERLEARN_SECRET"
    if not value:
        raise ConfigError("config error: PEERLEARN_SECRET: a run launched by hand or by torchrun needs a secret "
                          f"shared by its ranks (PEERLEARN_SECRET or --secret-file; {GENERATE}), or --insecure on a "
                          "network where every process is yours (docs/security.md)")
    if len(value) < MIN_SECRET:
        raise ConfigError(f"config error: {source}: at least {MIN_SECRET} characters, got {len(value)} ({GENERATE})")
    return value.encode()


def config_digest(cfg_dict: dict) -> str:
    """What ranks must share to run together: the resolved config, as canonical JSON, hashed."""
    return hashlib.sha256(json.dumps(cfg_dict, sort_keys=True, default=str).encode()).hexdigest()


class SessionStore(dist.Store):
    """The launch's store as a run's members see it: key names hashed and values tagged with keys derived
    from the secret and the run's challenge. ``get`` and ``compare_set`` refuse a value whose tag is
    wrong (:class:`TamperedValue`); ``add`` counters are not tagged (peerlearn's keys use ``set``)."""

    def __init__(self, inner, secret: bytes, challenge: bytes):
        super().__init__()
        self.inner = inner
        self._names = _mac(secret, "peerlearn-names", challenge)
        self._tags = _mac(secret, "peerlearn-values", challenge)

    def name(self, key: str) -> str:
        return "peerlearn/s/" + _mac(self._names, key).hex()[:40]

    def _tagged(self, name: str, value) -> bytes:
        data = value.encode() if isinstance(value, str) else bytes(value)
        return data + _mac(self._tags, name, data)

    def _open(self, key: str, name: str, stored: bytes) -> bytes:
        data, tag = stored[:-TAG], stored[-TAG:]
        if len(stored) < TAG or not hmac.compare_digest(tag, _mac(self._tags, name, data)):
            raise TamperedValue(f"the store's value for {key!r} does not carry this run's tag: a process without "
                                "the secret wrote it (someone who reaches the store tampered with the run)")
        return data

    def set(self, key, value):
        name = self.name(key)
        self.inner.set(name, self._tagged(name, value))

    def get(self, key):
        name = self.name(key)
        return self._open(key, name, self.inner.get(name))

    def compare_set(self, key, expected, desired):
        name = self.name(key)
        expected = b"" if expected in ("", b"") else self._tagged(name, expected)
        return self._open(key, name, self.inner.compare_set(name, expected, self._tagged(name, desired)))

    def add(self, key, amount):
        return self.inner.add(self.name(key), amount)

    def check(self, keys):
        return self.inner.check([self.name(k) for k in keys])

    def wait(self, keys, timeout=None):
        names = [self.name(k) for k in keys]
        return self.inner.wait(names) if timeout is None else self.inner.wait(names, timeout)

    def delete_key(self, key):
        return self.inner.delete_key(self.name(key))

    def num_keys(self):
        return self.inner.num_keys()

    def set_timeout(self, timeout):
        return self.inner.set_timeout(timeout)


def _join_proof(secret: bytes, challenge: bytes, ticket: int, rank, request: dict, nonce: str) -> str:
    """What a joining rank sends and rank 0 recomputes: the secret over this run's challenge, the ticket, the
    rank, what it runs (world size, version, config hash) and its own nonce."""
    return _mac(secret, "join", challenge, ticket, rank, request.get("world"), request.get("version"),
                request.get("config"), nonce).hex()


def _verdict_tag(secret: bytes, challenge: bytes, ticket: int, nonce: str, admitted: bool, reason: str) -> str:
    return _mac(secret, "verdict", challenge, ticket, nonce, admitted, reason).hex()


class Doorkeeper:
    """Rank 0's side: publishes the challenge and answers every join request until :meth:`close`.

    :meth:`admit` waits until every rank ``1..world-1`` is admitted (or raises :class:`JoinRefused` after
    ``timeout_s``); afterwards a thread goes on refusing whoever still tries to join, one line each."""

    def __init__(self, store, world: int, secret: bytes, expect: dict, say: Callable[[str], None]):
        self.store, self.world, self.secret, self.expect, self.say = store, world, secret, expect, say
        self.challenge = secrets.token_bytes(16)
        self.admitted: set[int] = set()
        self.started = False
        self.refused = 0
        self._next, self._pending = 0, set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        store.set(JOIN + "challenge", json.dumps({"challenge": self.challenge.hex(),
                                                  "tag": _mac(secret, "challenge", self.challenge).hex()}))

    def _answer(self, ticket: int, raw: bytes) -> None:
        try:
            req = json.loads(raw)
            rank, nonce = int(req["rank"]), str(req["nonce"])
            who = f"rank {rank}"
            where = f" (host {str(req.get('host'))[:64]!r}, pid {str(req.get('pid'))[:12]})"
        except (ValueError, KeyError, TypeError):
            req, rank, nonce, who, where = None, -1, "", "an unreadable request", ""
        reason = self._judge(ticket, req, rank, nonce) if req is not None else "the request is not peerlearn's"
        admitted = reason is None
        reason = reason or ""
        self.store.set(JOIN + f"verdict/{ticket}", json.dumps({
            "admitted": admitted, "reason": reason,
            "tag": _verdict_tag(self.secret, self.challenge, ticket, nonce, admitted, reason)}))
        if admitted:
            self.admitted.add(rank)
            return
        self.refused += 1
        if self.refused <= MAX_REFUSAL_LINES:
            self.say(f"refused a join as {who}{where}: {reason}; the run goes on")
        elif self.refused == MAX_REFUSAL_LINES + 1:
            self.say("more joins are being refused; only the first "
                     f"{MAX_REFUSAL_LINES} are named")

    def _judge(self, ticket: int, req: dict, rank: int, nonce: str) -> str | None:
        """Why the request is refused, or None to admit it."""
        if req.get("challenge") != self.challenge.hex():
            return "it answers another run's challenge (a replayed request, or a rank of another run)"
        if not self.secret:
            if req.get("proof"):
                return "it holds a secret and this run is --insecure: give every rank the same setting"
        elif not req.get("proof"):
            return "it presented no proof of the run's secret (started without it, or with --insecure)"
        else:
            if not hmac.compare_digest(str(req["proof"]), _join_proof(self.secret, self.challenge, ticket, rank, req,
                                                                      nonce)):
                return "its proof of the secret is wrong (another PEERLEARN_SECRET, or a forged request)"
        for field, what in (("world", "world size (WORLD_SIZE)"), ("version", "peerlearn version"),
                            ("config", "config (the resolved YAML and --set)")):
            if req.get(field) != self.expect[field]:
                return f"its {what} differs from rank 0's ({str(req.get(field))[:16]} vs {str(self.expect[field])[:16]})"
        if not 1 <= rank < self.world:
            return f"rank {rank} is not a joining rank of a {self.world}-rank run"
        if rank in self.admitted:
            return f"rank {rank} is already in the run"
        if self.started:
            return "the run has already started"
        return None

    def poll(self) -> None:
        """Answer the requests that arrived since the last call."""
        with self._lock:
            count = int(self.store.add(JOIN + "tickets", 0))
            self._pending.update(range(self._next, count))
            self._next = max(self._next, count)
            for ticket in sorted(self._pending):
                key = JOIN + f"req/{ticket}"
                if self.store.check([key]):
                    self._pending.discard(ticket)
                    self._answer(ticket, self.store.get(key))

    def admit(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            if len(self.admitted) == self.world - 1:
                break
            if time.monotonic() > deadline:
                missing = sorted(set(range(1, self.world)) - self.admitted)
                raise JoinRefused(f"ranks {missing} did not join within {timeout_s:g} s (--startup-timeout-s)"
                                  + (f"; {self.refused} joins were refused" if self.refused else ""))
            time.sleep(0.05)
        self.started = True
        threading.Thread(target=self._watch, name="peerlearn-doorkeeper", daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.poll()
            except Exception:  # the store is gone (the launch is ending)
                return

    def close(self) -> None:
        self._stop.set()


def request_join(store, rank: int, secret: bytes, expect: dict, timeout_s: float) -> bytes:
    """A joining rank's side: answer rank 0's challenge and wait for its verdict. Returns the challenge
    (the session's) when admitted; raises :class:`JoinRefused` with rank 0's reason otherwise."""
    deadline = time.monotonic() + timeout_s
    raw = _await(store, JOIN + "challenge", deadline,
                 f"rank 0 published no challenge within {timeout_s:g} s (--startup-timeout-s)")
    try:
        published = json.loads(raw)
        challenge = bytes.fromhex(published["challenge"])
        signed = hmac.compare_digest(bytes.fromhex(published["tag"]), _mac(secret, "challenge", challenge))
    except (ValueError, KeyError, TypeError):
        raise JoinRefused("rank 0's challenge could not be read (the store was tampered with)") from None
    # answered even when this secret cannot verify the challenge: rank 0 then names the refused join
    nonce = secrets.token_hex(16)
    ticket = int(store.add(JOIN + "tickets", 1)) - 1
    proof = _join_proof(secret, challenge, ticket, rank, expect, nonce) if secret else None
    store.set(JOIN + f"req/{ticket}", json.dumps({
        "rank": rank, "nonce": nonce, "challenge": challenge.hex(), "proof": proof, "host": socket.gethostname(),
        "pid": os.getpid(), **expect}))
    raw = _await(store, JOIN + f"verdict/{ticket}", deadline,
                 f"rank 0 did not answer this rank's join within {timeout_s:g} s (--startup-timeout-s)")
    try:
        verdict = json.loads(raw)
        admitted, reason = bool(verdict["admitted"]), str(verdict["reason"])
    except (ValueError, KeyError, TypeError):
        raise JoinRefused("rank 0's answer to this rank's join could not be read") from None
    if not admitted:
        hint = "" if signed or not secret else " (its challenge was not signed with this rank's secret either)"
        raise JoinRefused(f"rank 0 refused this rank: {reason}{hint}")
    if not hmac.compare_digest(str(verdict.get("tag")), _verdict_tag(secret, challenge, ticket, nonce, True, "")):
        raise JoinRefused("an admission without rank 0's tag answered this rank's join: the ranks' secrets differ, "
                          "or the store was tampered with")
    return challenge


def _await(store, key: str, deadline: float, late: str) -> bytes:
    """The value of ``key`` once it is in the store; :class:`JoinRefused` with ``late`` at the deadline."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise JoinRefused(late)
        try:
            store.wait([key], datetime.timedelta(seconds=min(left, 5.0)))
        except RuntimeError:  # not there yet
            continue
        return store.get(key)


def join(store, rank: int, world: int, secret: bytes, expect: dict, timeout_s: float,
         say: Callable[[str], None]) -> tuple[SessionStore, Doorkeeper | None]:
    """Admit this rank to the run (rank 0 admits the others): the run's :class:`SessionStore`, and on rank 0
    the :class:`Doorkeeper` (close it when the run ends)."""
    if rank == 0:
        keeper = Doorkeeper(store, world, secret, expect, say)
        keeper.admit(timeout_s)
        return SessionStore(store, secret, keeper.challenge), keeper
    return SessionStore(store, secret, request_join(store, rank, secret, expect, timeout_s)), None
