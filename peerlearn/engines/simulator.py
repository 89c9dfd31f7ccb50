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

from peerlearn.divergence import watch_run
from peerlearn.engines.comm import SimComm
from peerlearn.engines.loop import RunRows
from peerlearn.engines.run import _clone, is_evaluation_round, make_evaluator, rejoin, restore, round_network
from peerlearn.rows import freeze_rows
from peerlearn.types import AsyncAlgorithm, Tensor


def simulate(built, on_eval: Callable[[dict], None] | None = None,
             on_round: Callable[[int, dict], None] | None = None,
             on_finish: Callable[[Tensor], None] | None = None,
             on_checkpoint: Callable[[dict], None] | None = None,
             resume: dict | None = None) -> list[dict]:
    """Run ``built`` (from :func:`peerlearn.config.build`) to the end; returns the evaluated rows.

    Rows are evaluated at round 0, every ``eval_every`` rounds and at the last round;
    ``on_finish`` receives the final ``params_NP``. After every evaluated row, ``on_checkpoint``
    receives a snapshot of everything the rest of the run depends on (models, algorithm state,
    sampler and attack generators, byte counters, the rows so far); ``resume=snapshot`` continues
    from it and produces the same rows as the uninterrupted run (``wall_time_s`` aside).
    Every other random choice (schedules, faults, client samples) is a pure function of the round.
    """
    if isinstance(built.algorithm, AsyncAlgorithm):
        raise TypeError("an asynchronous algorithm runs on the event engine: peerlearn.engines.simulate picks it")
    cfg = built.config
    comm = SimComm(built.W)
    comm.set_threat(built.threat)
    book = RunRows(built, make_evaluator(built), watch_run(built), on_eval)
    params_NP = built.params_NP.clone()
    state = built.algorithm.init(params_NP)
    faults = built.faults
    alive_N = None if faults is None else torch.from_numpy(faults.alive(0).copy())
    clock = built.clock() if built.clock is not None else None

    def record(round_: int) -> None:
        book.record(round_, params_NP, alive_N, comm.bytes_sent_total, clock.metrics() if clock is not None else {},
                    built.algorithm.report(state) if built.algorithm.report is not None else None)
        if on_checkpoint is not None:
            on_checkpoint({"round": round_, "params_NP": params_NP, "state": state, "sampler": built.batches.state_dict(),
                           "comm": comm.state_dict(), "clock": None if clock is None else clock.state_dict(),
                           **book.checkpoint()})

    if resume is None:
        first = 1
        record(0)
    else:
        first, params_NP, state, _, alive_N = restore(built, resume)
        book.resume(resume)
        comm.load_state_dict(resume["comm"])
        if clock is not None and resume.get("clock") is not None:
            clock.load_state_dict(resume["clock"])
    for round_ in range(first, cfg.num_rounds + 1):
        W, rf, copied = round_network(built, round_)
        params_NP = rejoin(params_NP, copied)
        if W is not None:
            comm.set_topology(W)
        if rf is not None:
            comm.set_alive(rf.alive_N)
            alive_N = rf.alive_N
            if clock is not None and len(copied[0]):  # the copy's time comes with it
                clock.sync(*copied)
        down = None if alive_N is None or bool(alive_N.all()) else ~alive_N
        silent = down is not None and not bool(alive_N.any())
        drawn0, bytes0 = built.batches.drawn_N.clone(), comm.bytes_sent_N.clone()
        server0, calls0 = comm.bytes_sent_server, comm.collective_calls
        if silent:  # the whole network is down: nothing happens this round
            step_metrics = {"loss": math.nan}
        else:
            before = (params_NP.clone(), tree_map(_clone, state)) if down is not None else None
            params_NP, state, step_metrics = built.algorithm.step(state, params_NP, built.batches, built.grad_fn,
                                                                  comm)
            if before is not None:  # a down node neither trains nor communicates: its rows stay as they were
                params_NP, state = freeze_rows(params_NP, before[0], down), freeze_rows(state, before[1], down)
        if round_ == cfg.num_rounds and built.final_merge and not silent:  # one global average, then evaluate
            merged = comm.all_reduce_mean(params_NP).expand_as(params_NP)
            params_NP = merged.clone() if down is None else torch.where(down[:, None], params_NP, merged)
        if clock is not None:
            clock.advance((built.batches.drawn_N - drawn0).numpy().astype(np.float64),
                          (comm.bytes_sent_N - bytes0).numpy(), comm.W, comm.collective_calls > calls0,
                          comm.bytes_sent_server - server0, None if alive_N is None else alive_N.numpy())
        book.step(round_, step_metrics, watch=not silent)
        if is_evaluation_round(cfg, round_):
            record(round_)
        if on_round is not None:
            on_round(round_, book.rows[-1])
    if on_finish is not None:
        on_finish(params_NP)
    return book.rows
