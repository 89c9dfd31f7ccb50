"""A churn scenario: which peers of a swarm join, leave or crash, and at which round.

A scenario is a YAML file given to every peer of a swarm (``--churn FILE``; the launcher passes it on),
so a churn experiment on one machine is the same experiment at every run::

    events:
      - {peer: 4, round: 20, event: join}    # starts once the swarm's clock reaches round 20
      - {peer: 1, round: 60, event: leave}   # writes its row of round 60 and leaves the swarm cleanly
      - {peer: 2, round: 80, event: crash}   # SIGKILL as its round 80 starts: nothing more is written

- **join** (asynchronous algorithms: their rounds are the swarm's wall clock): the peer is started with
  the others but stays out of the roster until the swarm's round ``round``, then joins as a late peer
  does (it starts from the models it receives). The peers that start the swarm wait for each other only.
- **leave**: after round ``round`` the peer records its row, marks its roster record as left, tells every
  peer (a message of no rows) that it is in no exchange from the next round on, so nobody waits for it,
  lets its last messages arrive and exits 0 with status ``left``.
- **crash**: the peer kills itself with SIGKILL as round ``round`` starts (a real crash: the others find
  out by its silence, as in ``tests/distributed/test_p2p.py``).

Churn in rounds, not seconds, is what the field's disrupted-network experiments vary (Palmieri et al.,
"Exploring the Impact of Disrupted Peer-to-Peer Communications on Fully Decentralized Learning in
Disaster Scenarios", ICT-DM 2023); the simulator's ``faults`` section is the same idea for simulated nodes.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peerlearn.spec import ConfigError


class ChurnEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    peer: int = Field(ge=0, description="the peer's index (its block of nodes)")
    round: int = Field(ge=1, description="the round at which it happens")
    event: Literal["join", "leave", "crash"]


class Churn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[ChurnEvent] = Field(default_factory=list)

    def of(self, peer: int) -> dict[str, int]:
        """``{event: round}`` of one peer."""
        return {e.event: e.round for e in self.events if e.peer == peer}

    @property
    def joiners(self) -> set[int]:
        return {e.peer for e in self.events if e.event == "join"}


def load_churn(path: str | None, peers: int, num_rounds: int, asynchronous: bool) -> Churn:
    """The scenario of ``path`` (none: no churn), checked against a swarm of ``peers`` peers and ``num_rounds``
    rounds; a ConfigError naming the field otherwise (before any peer starts)."""
    if not path:
        return Churn()
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"config error: --churn: cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config error: --churn: {path} is not YAML: {str(err).splitlines()[0]}") from None
    try:
        churn = Churn.model_validate(raw if raw is not None else {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise ConfigError(f"config error: --churn: {where}: {first['msg']}") from None
    seen: dict[int, dict[str, int]] = {}
    for k, e in enumerate(churn.events):
        field = f"--churn: events.{k}"
        if e.peer >= peers:
            raise ConfigError(f"config error: {field}.peer: the swarm has peers 0..{peers - 1}, got {e.peer}")
        if e.round >= num_rounds:
            raise ConfigError(f"config error: {field}.round: an event must come before the last round "
                              f"({num_rounds}), got {e.round}")
        mine = seen.setdefault(e.peer, {})
        if e.event in mine or ({"leave", "crash"} & set(mine) and e.event in ("leave", "crash")):
            raise ConfigError(f"config error: {field}.event: peer {e.peer} already has a {next(iter(mine))} event "
                              "(a peer joins at most once, then leaves or crashes at most once)")
        mine[e.event] = e.round
        if e.event == "join":
            if not asynchronous:
                raise ConfigError(f"config error: {field}.event: a peer joins a running swarm under asynchronous "
                                  "algorithms only (gossip_learning, async_push_sum, "
                                  "async_local_sgd): a synchronous swarm's rounds wait for every peer from the start")
            if e.peer == 0:
                raise ConfigError(f"config error: {field}.peer: peer 0 starts the swarm; it cannot join late")
    for peer, mine in seen.items():
        if "join" in mine and any(r <= mine["join"] for ev, r in mine.items() if ev != "join"):
            raise ConfigError(f"config error: --churn: peer {peer} leaves or crashes before it joins")
    if len(churn.joiners) >= peers:
        raise ConfigError("config error: --churn: every peer joins late: at least one must start the swarm")
    return churn


class Left(Exception):
    """This peer left the swarm, as its churn scenario says (not a failure: its run ends with status ``left``)."""


def churn_point(plan: dict[str, int], round_: int, book, record: Callable[[int], None], leave: Callable[[int], None]):
    """Before round ``round_`` of a peer whose scenario is ``plan`` (:meth:`Churn.of`): crash (SIGKILL) as its
    crash round starts; after its leave round, record that round's row (unless it was recorded), ``leave(round_)``
    and raise :class:`Left`."""
    if plan.get("crash") == round_:
        os.kill(os.getpid(), signal.SIGKILL)
    if "leave" in plan and round_ == plan["leave"] + 1:
        if not book.rows or book.rows[-1]["round"] != plan["leave"]:
            record(plan["leave"])
        leave(round_)
        raise Left(f"left the swarm after round {plan['leave']}, as the churn scenario says")
