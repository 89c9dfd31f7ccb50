"""The batched single-process engine: all N nodes in one tensor, one loop over rounds.

The engine owns the loop, evaluation and byte counting; algorithms only return their
metrics. Evaluation rows go to a callback (the run-directory writer) as soon as they exist,
so an interrupted run keeps every row it computed.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from torch.utils._pytree import tree_map

from peerlearn.attribution.base import RoundView, summary
from peerlearn.device import from_host, numpy
from peerlearn.divergence import watch_run
from peerlearn.engines.comm import SimComm
from peerlearn.engines.loop import RunRows, run_rounds
from peerlearn.engines.run import _clone, make_evaluator, rejoin, restore, round_network
from peerlearn.rows import freeze_rows
from peerlearn.types import AsyncAlgorithm, Tensor


def simulate(built, on_eval: Callable[[dict], None] | None = None,
             on_round: Callable[[int, dict], None] | None = None,
             on_finish: Callable[[Tensor], None] | None = None,
             on_checkpoint: Callable[[dict], None] | None = None,
             resume: dict | None = None,
             on_scores: Callable[[int, dict], None] | None = None,
             on_artifacts: Callable[[dict], None] | None = None) -> list[dict]:
    """Run ``built`` (from :func:`peerlearn.config.build`) to the end; returns the evaluated rows.

    Rows are evaluated at round 0, every ``eval_every`` rounds and at the last round;
    ``on_finish`` receives the final ``params_NP``. After every evaluated row, ``on_checkpoint``
    receives a snapshot of everything the rest of the run depends on (models, algorithm state,
    sampler and attack generators, byte counters, the rows so far); ``resume=snapshot`` continues
    from it and produces the same rows as the uninterrupted run (``wall_time_s`` aside).
    Every other random choice (schedules, faults, client samples) is a pure function of the round.
    With an attribution scorer (``built.attribution``) each row gains its summary columns and ``on_scores``
    receives ``(round, {"node": node_N, "pair": pair_NN, "honest": honest_N})`` at every evaluated round
    (:mod:`peerlearn.attribution`). ``on_artifacts`` receives, at the end, what the algorithm's ``artifacts``
    hook returns (e.g. SCooL's cooperation graph).
    """
    if isinstance(built.algorithm, AsyncAlgorithm):
        raise TypeError("an asynchronous algorithm runs on the event engine: peerlearn.engines.simulate picks it")
    driver = _Batched(built, on_eval, on_checkpoint, on_scores)
    rows = run_rounds(driver, built, driver.book, on_round, on_finish, resume)
    if on_artifacts is not None and built.algorithm.artifacts is not None:
        on_artifacts(built.algorithm.artifacts(driver.state))
    return rows


class _Batched:
    """The batched simulator's round (a :func:`~peerlearn.engines.loop.run_rounds` driver): every node's
    row in one tensor, one :class:`SimComm`."""

    def __init__(self, built, on_eval, on_checkpoint, on_scores=None):
        self.built, self.on_checkpoint, self.on_scores = built, on_checkpoint, on_scores
        self.comm = SimComm(built.W)
        self.comm.set_threat(built.threat)
        self.book = RunRows(built, make_evaluator(built), watch_run(built), on_eval)
        self.params_NP = built.params_NP.clone()
        self.state = built.algorithm.init(self.params_NP)
        self.alive_N = None if built.faults is None else from_host(built.faults.alive(0).copy())
        self.clock = built.clock() if built.clock is not None else None
        self.scores = None if built.attribution is None else built.attribution.init(built.config.num_nodes)
        self.comm.record_sent = self.scores is not None

    def record(self, round_: int) -> None:
        built, clock, report = self.built, self.clock, self.built.algorithm.report
        more = report(self.state) if report is not None else {}
        if self.scores is not None:
            node_N, pair_NN = built.attribution.read(self.scores)
            more = {**more, **summary(node_N, built.honest_N)}
            if self.on_scores is not None:
                self.on_scores(round_, {"node": node_N, "pair": pair_NN, "honest": built.honest_N})
        self.book.record(round_, self.params_NP, self.alive_N, self.comm.bytes_sent_total,
                         clock.metrics() if clock is not None else {}, more or None)
        if self.on_checkpoint is not None:
            self.on_checkpoint({"round": round_, "params_NP": self.params_NP, "state": self.state,
                                "sampler": built.batches.state_dict(), "comm": self.comm.state_dict(),
                                "clock": None if clock is None else clock.state_dict(), "attribution": self.scores,
                                **self.book.checkpoint()})

    def resume(self, snapshot: dict) -> int:
        first, self.params_NP, self.state, _, self.alive_N = restore(self.built, snapshot)
        if self.scores is not None and snapshot.get("attribution") is not None:
            self.scores = snapshot["attribution"]
        self.book.resume(snapshot)
        self.comm.load_state_dict(snapshot["comm"])
        if self.clock is not None and snapshot.get("clock") is not None:
            self.clock.load_state_dict(snapshot["clock"])
        return first - 1

    def models(self) -> Tensor:
        return self.params_NP

    def advance(self, round_: int) -> None:
        """One round: the network (schedule, faults, returning nodes' copies), the step (down nodes frozen),
        the final merge after the last round, the clock and the step's metrics."""
        built, comm, clock = self.built, self.comm, self.clock
        W, rf, copied = round_network(built, round_)
        self.params_NP = rejoin(self.params_NP, copied)
        if W is not None:
            comm.set_topology(W)
        if rf is not None:
            comm.set_alive(rf.alive_N)
            self.alive_N = rf.alive_N
            if clock is not None and len(copied[0]):  # the copy's time comes with it
                clock.sync(*copied)
        alive_N = self.alive_N
        down = None if alive_N is None or bool(alive_N.all()) else ~alive_N
        silent = down is not None and not bool(alive_N.any())
        drawn0, bytes0 = built.batches.drawn_N.clone(), comm.bytes_sent_N.clone()
        start_NP = self.params_NP.clone() if self.scores is not None else None
        comm.sent_NP = None
        server0, calls0, hops0 = comm.bytes_sent_server, comm.collective_calls, comm.latency_hops
        if silent:  # the whole network is down: nothing happens this round
            step_metrics = {"loss": math.nan}
        else:
            before = (self.params_NP.clone(), tree_map(_clone, self.state)) if down is not None else None
            self.params_NP, self.state, step_metrics = built.algorithm.step(self.state, self.params_NP, built.batches,
                                                                            built.grad_fn, comm)
            if before is not None:  # a down node neither trains nor communicates: its rows stay as they were
                self.params_NP, self.state = freeze_rows(self.params_NP, before[0], down), freeze_rows(self.state,
                                                                                                   before[1], down)
        if clock is not None:
            clock.advance(numpy(built.batches.drawn_N - drawn0).astype(np.float64),
                          numpy(comm.bytes_sent_N - bytes0), comm.W, comm.collective_calls > calls0,
                          comm.bytes_sent_server - server0, None if alive_N is None else numpy(alive_N),
                          hops=comm.latency_hops - hops0)
        self.book.step(round_, step_metrics, watch=not silent)
        if start_NP is not None and not silent:
            self._score(round_, start_NP)

    def _score(self, round_: int, start_NP: Tensor) -> None:
        """The attribution scorer's view of the round just run."""
        comm, n = self.comm, self.params_NP.shape[0]
        W = torch.eye(n) if comm.W is None else comm.dense_W()
        sent = comm.sent_NP if comm.sent_NP is not None and comm.sent_NP.shape == self.params_NP.shape else None
        view = RoundView(round_, start_NP, self.params_NP, W.to(self.params_NP.device), sent)
        self.scores = self.built.attribution.update(self.scores, view)
