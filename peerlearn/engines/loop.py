"""What every engine's round loop keeps the same way: the rows, and what goes into the next one.

:class:`RunRows` collects a run's evaluation rows for every engine (batched simulator, event-driven
asynchronous engine, distributed ranks): the step metrics since the last row (``loss`` and the
algorithm's own, averaged into ``<key>_mean`` columns), the divergence watch (each step's loss, each
row's models), the wall clock, the evaluation (one :func:`~peerlearn.engines.run.evaluation_row`),
the ``on_eval`` callback, and what a checkpoint or a rollback needs to continue with the same rows.
An engine only advances rounds and says when to record: :func:`run_rounds` is the one loop that
drives every engine's round (its *driver*).
"""

from __future__ import annotations

import time
from typing import Callable

from peerlearn.divergence import DivergenceWatch
from peerlearn.engines.run import Evaluator, evaluation_row, is_evaluation_round, step_means
from peerlearn.types import Tensor


class RunRows:
    """The rows of one run (see the module doc).

    Args:
        built: the built run (its honest nodes and node count).
        evaluate: the run's evaluator (rank 0's only, on a distributed run).
        watch: the run's divergence watch.
        on_eval: called with every new row.
    """

    def __init__(self, built, evaluate: Evaluator | None, watch: DivergenceWatch,
                 on_eval: Callable[[dict], None] | None = None):
        self.honest_N, self.num_nodes = built.honest_N, built.config.num_nodes
        self.evaluate, self.watch, self.on_eval = evaluate, watch, on_eval
        self.rows: list[dict] = []
        self.losses: list[float] = []
        self.extra: dict[str, list[float]] = {}  # the steps' other metrics since the last row
        self.start = time.perf_counter()

    def step(self, round_: int, metrics: dict, keep: bool = True, watch: bool = True, **watch_options) -> None:
        """A step's metrics: kept for the next row (``keep``) and its loss given to the divergence watch
        (``watch``; ``nan_means_idle`` and the like go to :meth:`DivergenceWatch.step`)."""
        if keep:
            self.losses.append(metrics["loss"])
            for key, value in metrics.items():
                if key != "loss":
                    self.extra.setdefault(key, []).append(value)
        if watch:
            self.watch.step(round_, metrics["loss"], **watch_options)

    def record(self, round_: int, params_NP: Tensor, alive_N: Tensor | None, bytes_total: float,
               clock_metrics: dict, more: dict | None = None) -> dict:
        """Evaluate ``params_NP`` into the row of ``round_`` (with the step means since the last row and
        ``more``), hand it to ``on_eval`` and start the next one."""
        row = evaluation_row(round_, self.evaluate, params_NP, alive_N, self.losses, self.honest_N, bytes_total,
                             self.num_nodes, time.perf_counter() - self.start, clock_metrics, self.watch)
        row.update(step_means(self.extra))
        row.update(more or {})
        self.losses.clear()
        self.extra.clear()
        self.rows.append(row)
        if self.on_eval is not None:
            self.on_eval(row)
        return row

    def checkpoint(self) -> dict:
        """What a checkpoint keeps of the rows (right after a row): the rows, the wall time, the watch."""
        return {"rows": self.rows, "wall_time_s": self.rows[-1]["wall_time_s"], "divergence": self.watch.state_dict()}

    def resume(self, snapshot: dict) -> None:
        """Continue from a checkpoint: its rows, its wall time, its watch."""
        self.rows[:] = list(snapshot["rows"])
        self.start -= snapshot["wall_time_s"]
        self.watch.load_state_dict(snapshot.get("divergence"))

    def since_last_row(self) -> tuple[list, dict]:
        """A copy of the step metrics kept since the last row (what a rollback returns to)."""
        return list(self.losses), {k: list(v) for k, v in self.extra.items()}

    def roll_back(self, kept: tuple[list, dict]) -> None:
        self.losses[:] = kept[0]
        self.extra.clear()
        self.extra.update({k: list(v) for k, v in kept[1].items()})


def run_rounds(driver, built, book: RunRows, on_round: Callable[[int, dict], None] | None = None,
               on_finish: Callable[[Tensor], None] | None = None, resume: dict | None = None,
               recoverable: type[BaseException] | tuple = (), recover=None) -> list[dict]:
    """The one round loop of every engine: the row of round 0 (or ``driver.resume(resume)``, which returns
    the snapshot's round), then each round ``driver.advance(round)``, the row at evaluation rounds
    (``driver.record(round)``) and ``on_round(round, last row)``; at the end ``on_finish(driver.models())``.

    A driver is one engine's round: the batched simulator, the event-driven asynchronous engine, a
    distributed rank. An exception of type ``recoverable`` (a peer's failure) goes to
    ``recover(error, round) -> round to continue after`` (the rank's rollback). Returns the rows.
    """
    cfg = built.config
    round_ = 0 if resume is None else driver.resume(resume) + 1
    while round_ <= cfg.num_rounds + 1:
        try:
            if round_ == 0:
                driver.record(0)
            elif round_ <= cfg.num_rounds:
                driver.advance(round_)
                if is_evaluation_round(cfg, round_):
                    driver.record(round_)
                if on_round is not None:
                    on_round(round_, book.rows[-1])
            else:
                models = driver.models()
                if on_finish is not None:
                    on_finish(models)
            round_ += 1
        except recoverable as failure:
            round_ = recover(failure, round_) + 1
    return book.rows
