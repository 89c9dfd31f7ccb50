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

from peerlearn.divergence import watch_run
from peerlearn.engines.async_net import AsyncNet
from peerlearn.engines.loop import RunRows
from peerlearn.engines.run import is_evaluation_round, make_evaluator, rejoin, restore, round_network
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
    cfg, algo = built.config, built.algorithm
    clock = built.clock()
    net = AsyncNet(built.W, seed=stream_seed(cfg.seed, "async_net"))
    book = RunRows(built, make_evaluator(built), watch_run(built), on_eval)
    params_NP = built.params_NP.clone()
    state = algo.init(params_NP)
    n = cfg.num_nodes
    message_bytes = params_NP.shape[1] * params_NP.element_size()
    round_s = round_seconds(cfg.algorithm.num_local_steps, message_bytes, clock.step_time_s, clock.bandwidth_Bps,
                            clock.latency_s)
    slices = cfg.clock.slices_per_round
    period = cfg.algorithm.period_s if cfg.algorithm.period_s is not None else (round_s if algo.timer else 0.0)
    due_N = net.rng.uniform(0.0, period, n) if algo.timer else np.zeros(n)
    faults = built.faults
    alive_N = torch.ones(n, dtype=torch.bool) if faults is None else torch.from_numpy(faults.alive(0).copy())

    def record(round_: int) -> None:
        clock.t_N[alive_N.numpy()] = round_ * round_s
        book.record(round_, params_NP, None if faults is None else alive_N, net.bytes_sent_total, clock.metrics())
        if on_checkpoint is not None:
            on_checkpoint({"round": round_, "params_NP": params_NP, "state": state, "sampler": built.batches.state_dict(),
                           "net": net.state_dict(), "clock": clock.state_dict(), "due_N": due_N.copy(),
                           **book.checkpoint()})

    if resume is None:
        first = 1
        record(0)
    else:
        first, params_NP, state, _, alive = restore(built, resume)
        book.resume(resume)
        alive_N = alive if alive is not None else alive_N
        net.load_state_dict(resume["net"])
        clock.load_state_dict(resume["clock"])
        due_N = resume["due_N"].copy()
    drawn = built.batches.drawn_N
    for round_ in range(first, cfg.num_rounds + 1):
        round_start = (round_ - 1) * round_s
        W, rf, copied = round_network(built, round_)
        params_NP = rejoin(params_NP, copied)
        if W is not None:
            net.set_topology(W)
        if rf is not None:
            alive_N = rf.alive_N
            due_N[rf.joined] = np.maximum(due_N[rf.joined], round_start)  # no burst of missed wake-ups
        alive = alive_N.numpy()
        for k in range(slices):
            end = round_start + (k + 1) * round_s / slices
            wakers = np.flatnonzero((due_N < end - 1e-9 * round_s) & alive)  # [start, end), rounding-safe
            if not len(wakers):
                continue
            wakers = net.rng.permutation(wakers)
            net.slice_end = end
            drawn0, sent0 = drawn.clone(), net.bytes_sent_N.copy()
            params_NP, state, metrics = algo.wake(state, params_NP, wakers, built.batches, built.grad_fn, net)
            compute = (drawn - drawn0).numpy() * clock.step_time_s * clock.slowdown_N
            sent = net.bytes_sent_N - sent0
            comm = np.where(sent > 0, sent / clock.bandwidth_Bps + clock.latency_s, 0.0)
            clock.compute_N += compute
            net.busy_until_N = np.where(compute > 0, np.maximum(net.busy_until_N, end - round_s / slices) + compute,
                                        net.busy_until_N)
            clock.comm_N += comm
            fired = np.setdiff1d(wakers, net.take_deferred())
            due_N[fired] += np.maximum(period, compute[fired] + comm[fired])
            book.step(round_, metrics, nan_means_idle=True)
        if is_evaluation_round(cfg, round_):
            record(round_)
        if on_round is not None:
            on_round(round_, book.rows[-1])
    if on_finish is not None:
        on_finish(params_NP)
    return book.rows
