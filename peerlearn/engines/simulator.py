"""The batched single-process engine: all N nodes in one tensor, one loop over rounds.

The engine owns the loop, evaluation and byte counting; algorithms only return their
metrics. Evaluation rows go to a callback (the run-directory writer) as soon as they exist,
so an interrupted run keeps every row it computed.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from torch.utils._pytree import tree_map

from peerlearn.engines.comm import SimComm
from peerlearn.rows import freeze_rows
from peerlearn.world.faults import RoundFaults
from peerlearn.metrics import accuracy, consensus_distance, summarize
from peerlearn.models.functional import FlatModel, predict_logits
from peerlearn.types import AsyncAlgorithm, Tensor

# Columns of metrics.csv, in order (a stable contract: later issues add columns at the end).
COLUMNS = ["round", "acc_mean", "acc_min", "acc_max", "acc_std", "acc_avg_model", "acc_local_mean",
           "loss_mean", "consensus_distance", "bytes_sent_total", "bytes_sent_per_node", "wall_time_s",
           "attack_success", "acc_alive_mean", "alive_nodes", "sim_time_s", "sim_compute_s", "sim_comm_s",
           "sim_wait_s", "staleness_mean", "epsilon"]


class Evaluator:
    """Test accuracy of the honest nodes' models, of their average, and on each node's local test split.

    ``honest_N`` masks out Byzantine nodes; ``attack_test = (x, y)`` (data attacks) adds
    ``attack_success``: the fraction of honest predictions on ``x`` equal to the attacker's labels ``y``
    (flipped labels; the target class on triggered inputs).
    """

    def __init__(self, flat: FlatModel, x_test: Tensor, y_test: Tensor,
                 x_train: Tensor | None = None, y_train: Tensor | None = None,
                 local_test_parts: list[np.ndarray] | None = None, honest_N: Tensor | None = None,
                 attack_test: tuple[Tensor, Tensor] | None = None):
        self.flat, self.x_test, self.y_test = flat, x_test, y_test
        self.honest_N, self.attack_test = honest_N, attack_test
        self.local = None
        if local_test_parts is not None:  # pad each node's local test indices to a rectangle + mask
            width = max(len(p) for p in local_test_parts)
            idx = np.zeros((len(local_test_parts), width), dtype=np.int64)
            mask = np.zeros_like(idx, dtype=bool)
            for i, p in enumerate(local_test_parts):
                idx[i, :len(p)], mask[i, :len(p)] = p, True
            self.local = (x_train[torch.from_numpy(idx)], y_train[torch.from_numpy(idx)], torch.from_numpy(mask))

    @torch.no_grad()
    def __call__(self, params_NP: Tensor, alive_N: Tensor | None = None) -> dict[str, float]:
        """Metrics over all (honest) nodes; ``acc_alive_mean`` over those of them that are up."""
        alive_N = torch.ones(params_NP.shape[0], dtype=torch.bool) if alive_N is None else alive_N
        if self.honest_N is not None:
            params_NP, alive_N = params_NP[self.honest_N], alive_N[self.honest_N]
        logits = predict_logits(self.flat, params_NP, self.x_test)
        acc_N = accuracy(logits, self.y_test)
        out = summarize(acc_N, "acc")
        out["acc_alive_mean"] = float(acc_N[alive_N].double().mean()) if bool(alive_N.any()) else float("nan")
        out["alive_nodes"] = int(alive_N.sum())
        out["attack_success"] = float("nan")
        if self.attack_test is not None:
            x_att, y_att = self.attack_test  # label flip measures on the clean test inputs: reuse their logits
            att_logits = logits if x_att is self.x_test else predict_logits(self.flat, params_NP, x_att)
            out["attack_success"] = float(accuracy(att_logits, y_att).mean())
        avg = params_NP.mean(0, keepdim=True)
        out["acc_avg_model"] = float(accuracy(predict_logits(self.flat, avg, self.x_test), self.y_test)[0])
        out["acc_local_mean"] = self._local_accuracy(params_NP) if self.local is not None else float("nan")
        return out

    def _local_accuracy(self, params_NP: Tensor) -> float:
        from torch.func import functional_call, vmap

        x, y, mask = self.local
        if self.honest_N is not None:
            x, y, mask = x[self.honest_N], y[self.honest_N], mask[self.honest_N]
        forward = vmap(lambda p, xb: functional_call(self.flat.module, self.flat.unravel(p), (xb,)))
        correct = (forward(params_NP, x).argmax(-1) == y) & mask
        return float((correct.sum(1) / mask.sum(1)).double().mean())


def is_evaluation_round(cfg, round_: int) -> bool:
    """Rows are evaluated at round 0, every ``eval_every`` rounds and at the last round (every engine)."""
    return round_ % cfg.eval_every == 0 or round_ == cfg.num_rounds


def evaluation_row(round_: int, evaluate: Evaluator, params_NP: Tensor, alive_N: Tensor | None, losses: list[float],
                   honest_N: Tensor, bytes_total: float, num_nodes: int, wall_time_s: float, clock_metrics: dict,
                   attacked: bool) -> dict:
    """One metrics row (both engines): evaluation, the mean of ``losses`` since the last row, bytes, time."""
    if not attacked and not bool(torch.isfinite(params_NP).all()):  # under attack, ruin is a result
        raise FloatingPointError(f"training diverged by round {round_} (non-finite parameters); "
                                 "lower algorithm.lr")
    return {"round": round_, **evaluate(params_NP, alive_N),
            "loss_mean": float(np.nanmean(losses)) if losses and not np.isnan(losses).all() else math.nan,
            "consensus_distance": consensus_distance(params_NP[honest_N]),
            "bytes_sent_total": bytes_total, "bytes_sent_per_node": bytes_total / num_nodes,
            "wall_time_s": wall_time_s, "staleness_mean": math.nan, "epsilon": math.nan, **clock_metrics}


def restore(built, resume: dict) -> tuple[int, Tensor, object, list[dict], Tensor | None]:
    """What both engines take back from a snapshot: (first round to run, params_NP, algorithm state,
    rows so far, alive_N); the sampler's generator is restored in place."""
    built.batches.load_state_dict(resume["sampler"])
    alive_N = None if built.faults is None else torch.from_numpy(built.faults.alive(resume["round"]).copy())
    return resume["round"] + 1, resume["params_NP"].clone(), resume["state"], list(resume["rows"]), alive_N


def round_network(built, round_: int, params_NP: Tensor) -> tuple[object, RoundFaults | None, Tensor, tuple]:
    """The round's mixing matrix after the schedule and the faults (None: unchanged), the round's
    faults (None without any), ``params_NP`` with each node that comes back copying an alive
    neighbour's model (``faults.rejoin``), and those copies as index arrays ``(dst, src)``."""
    base_W = built.schedule(round_) if built.schedule is not None else None
    if built.faults is None:
        return base_W, None, params_NP, ()
    rf = built.faults.at(round_, base_W if base_W is not None else built.W)
    dst, src = built.faults.rejoin_sources(rf.joined, built.adjacency, rf.alive_N.numpy(), round_)
    if len(dst):
        params_NP = params_NP.clone()
        params_NP[torch.from_numpy(dst)] = params_NP[torch.from_numpy(src)]
    return rf.W, rf, params_NP, (dst, src)


def _clone(x):
    return x.clone() if isinstance(x, Tensor) else x


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
    if isinstance(built.algorithm, AsyncAlgorithm):  # an event-driven algorithm: the asynchronous engine
        from peerlearn.engines.async_engine import simulate_async

        return simulate_async(built, on_eval, on_round, on_finish, on_checkpoint, resume)
    cfg = built.config
    comm = SimComm(built.W)
    ds = built.dataset
    comm.set_threat(built.threat)
    attacked = built.threat is not None or built.attack_test is not None
    evaluate = Evaluator(built.flat, ds.x_test, ds.y_test, ds.x_train, ds.y_train, built.local_test_parts,
                         built.honest_N, built.attack_test)
    params_NP = built.params_NP.clone()
    state = built.algorithm.init(params_NP)
    rows: list[dict] = []
    losses: list[float] = []
    faults = built.faults
    alive_N = None if faults is None else torch.from_numpy(faults.alive(0).copy())
    clock = built.clock() if built.clock is not None else None
    start = time.perf_counter()

    def record(round_: int) -> None:
        row = evaluation_row(round_, evaluate, params_NP, alive_N, losses, built.honest_N, comm.bytes_sent_total,
                             cfg.num_nodes, time.perf_counter() - start,
                             clock.metrics() if clock is not None else {}, attacked)
        if built.algorithm.report is not None:
            row.update(built.algorithm.report(state))
        losses.clear()
        rows.append(row)
        if on_eval is not None:
            on_eval(row)
        if on_checkpoint is not None:
            on_checkpoint({"round": round_, "params_NP": params_NP, "state": state, "rows": rows,
                           "sampler": built.batches.state_dict(), "comm": comm.state_dict(),
                           "clock": None if clock is None else clock.state_dict(),
                           "wall_time_s": row["wall_time_s"]})

    if resume is None:
        first = 1
        record(0)
    else:
        first, params_NP, state, rows[:], alive_N = restore(built, resume)
        comm.load_state_dict(resume["comm"])
        if clock is not None and resume.get("clock") is not None:
            clock.load_state_dict(resume["clock"])
        start -= resume["wall_time_s"]
    for round_ in range(first, cfg.num_rounds + 1):
        W, rf, params_NP, copied = round_network(built, round_, params_NP)
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
        losses.append(step_metrics["loss"])
        if not attacked and not silent and not math.isfinite(step_metrics["loss"]):
            raise FloatingPointError(f"training diverged at round {round_} (loss {step_metrics['loss']}); "
                                     "lower algorithm.lr")
        if is_evaluation_round(cfg, round_):
            record(round_)
        if on_round is not None:
            on_round(round_, rows[-1])
    if on_finish is not None:
        on_finish(params_NP)
    return rows
