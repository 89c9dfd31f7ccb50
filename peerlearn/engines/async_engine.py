"""The asynchronous engine: nodes act when their own clocks fire, in batched time slices.

Time is the simulated clock of :mod:`peerlearn.world.clock` (per-node compute speed, bandwidth,
latency). A *round* here is a unit of simulated time, ``round_s``: what a reference-speed node
needs to run its local steps and send one model (``num_local_steps * step_time_s + bytes /
bandwidth + latency``). So ``num_rounds`` and ``eval_every`` mean the same wall-clock budget as in
a synchronous run without stragglers, and rows are comparable by ``round`` and by ``sim_time_s``.

Each node has a due time. A round is cut into ``clock.slices_per_round`` slices; the nodes due in
a slice (and up) are shuffled and handed to the algorithm's ``wake`` together, so one slice costs
one batched training call over the wakers. A node's next due time is measured from what it
actually did: ``compute + comm`` of that wake (work-driven algorithms), or at least its timer
period (gossip learning: ``algorithm.period_s``, default ``round_s``, random initial phase). A
waker the algorithm defers (its peer was busy) keeps its due time and retries in the next slice.
A node cannot fire more than once per slice, so slices should be shorter than the fastest node's
cycle.

Faults apply per round exactly as in the synchronous engine: the round's surviving mixing matrix
decides who can reach whom, down nodes do not wake, and a node that comes back starts from an
alive neighbour's model (or its stale one).

References:
    Boyd et al., "Randomized Gossip Algorithms", 2006 (asynchronous time model: per-node clocks);
    Even, Hendrikx & Massoulié, "Decentralized Optimization with Heterogeneous Delays: a
    Continuous-Time Approach", 2021 (events of independent per-node clocks).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from peerlearn.device import from_host, numpy
from peerlearn.divergence import watch_run
from peerlearn.engines.async_net import AsyncNet
from peerlearn.engines.loop import RunRows, run_rounds
from peerlearn.engines.run import make_evaluator, rejoin, restore, round_network
from peerlearn.rng import stream_seed
from peerlearn.types import Tensor


def round_seconds(num_local_steps: int, message_bytes: int, step_time_s: float, bandwidth_Bps: float,
                  latency_s: float) -> float:
    """Simulated seconds of one round: a reference node's local steps plus one model sent."""
    return num_local_steps * step_time_s + message_bytes / bandwidth_Bps + latency_s


def simulate_async(built, on_eval: Callable[[dict], None] | None = None,
                   on_round: Callable[[int, dict], None] | None = None,
                   on_finish: Callable[[Tensor], None] | None = None,
                   on_checkpoint: Callable[[dict], None] | None = None,
                   resume: dict | None = None) -> list[dict]:
    """Run an :class:`~peerlearn.types.AsyncAlgorithm` to the end; same callbacks and rows as ``simulate``."""
    driver = _Events(built, on_eval, on_checkpoint)
    return run_rounds(driver, built, driver.book, on_round, on_finish, resume)


class _Events:
    """The event engine's round (a :func:`~peerlearn.engines.loop.run_rounds` driver): its time slices, and
    in each the nodes whose timers fire."""

    def __init__(self, built, on_eval, on_checkpoint):
        cfg, algo = built.config, built.algorithm
        self.built, self.on_checkpoint = built, on_checkpoint
        self.clock = built.clock()
        self.net = AsyncNet(built.W, seed=stream_seed(cfg.seed, "async_net"))
        self.book = RunRows(built, make_evaluator(built), watch_run(built), on_eval)
        self.params_NP = built.params_NP.clone()
        self.state = algo.init(self.params_NP)
        n, clock = cfg.num_nodes, self.clock
        message_bytes = self.params_NP.shape[1] * self.params_NP.element_size()
        self.round_s = round_seconds(cfg.algorithm.num_local_steps, message_bytes, clock.step_time_s,
                                     clock.bandwidth_Bps, clock.latency_s)
        self.period = cfg.algorithm.period_s if cfg.algorithm.period_s is not None else (
            self.round_s if algo.timer else 0.0)
        self.due_N = self.net.rng.uniform(0.0, self.period, n) if algo.timer else np.zeros(n)
        faults = built.faults
        self.alive_N = torch.ones(n, dtype=torch.bool) if faults is None else from_host(faults.alive(0).copy())

    def record(self, round_: int) -> None:
        built, clock = self.built, self.clock
        clock.t_N[numpy(self.alive_N)] = round_ * self.round_s
        self.book.record(round_, self.params_NP, None if built.faults is None else self.alive_N,
                         self.net.bytes_sent_total, clock.metrics())
        if self.on_checkpoint is not None:
            self.on_checkpoint({"round": round_, "params_NP": self.params_NP, "state": self.state,
                                "sampler": built.batches.state_dict(), "net": self.net.state_dict(),
                                "clock": clock.state_dict(), "due_N": self.due_N.copy(), **self.book.checkpoint()})

    def resume(self, snapshot: dict) -> int:
        first, self.params_NP, self.state, _, alive = restore(self.built, snapshot)
        self.book.resume(snapshot)
        self.alive_N = alive if alive is not None else self.alive_N
        self.net.load_state_dict(snapshot["net"])
        self.clock.load_state_dict(snapshot["clock"])
        self.due_N = snapshot["due_N"].copy()
        return first - 1

    def models(self) -> Tensor:
        return self.params_NP

    def advance(self, round_: int) -> None:
        """One round of simulated time: the round's network, then each slice's wakers."""
        round_start = (round_ - 1) * self.round_s
        W, rf, copied = round_network(self.built, round_)
        self.params_NP = rejoin(self.params_NP, copied)
        if W is not None:
            self.net.set_topology(W)
        if rf is not None:
            self.alive_N = rf.alive_N
            self.due_N[rf.joined] = np.maximum(self.due_N[rf.joined], round_start)  # no burst of missed wake-ups
        alive, slices = numpy(self.alive_N), self.built.config.clock.slices_per_round
        for k in range(slices):
            end = round_start + (k + 1) * self.round_s / slices
            wakers = np.flatnonzero((self.due_N < end - 1e-9 * self.round_s) & alive)  # [start, end), rounding-safe
            if len(wakers):
                self._wake(round_, self.net.rng.permutation(wakers), end, end - self.round_s / slices)

    def _wake(self, round_: int, wakers: np.ndarray, end: float, start: float) -> None:
        """The slice ``[start, end)``: the wakers act together; each is charged its work and set its next due time."""
        built, net = self.built, self.net
        net.slice_end = end
        drawn0, sent0 = built.batches.drawn_N.clone(), net.bytes_sent_N.copy()
        self.params_NP, self.state, metrics = built.algorithm.wake(self.state, self.params_NP, wakers, built.batches,
                                                                   built.grad_fn, net)
        compute, comm = self.clock.charge(numpy(built.batches.drawn_N - drawn0), net.bytes_sent_N - sent0)
        net.busy_until_N = np.where(compute > 0, np.maximum(net.busy_until_N, start) + compute, net.busy_until_N)
        fired = np.setdiff1d(wakers, net.take_deferred())
        self.due_N[fired] += np.maximum(self.period, compute[fired] + comm[fired])
        self.book.step(round_, metrics, nan_means_idle=True)
