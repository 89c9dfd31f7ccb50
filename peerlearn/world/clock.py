"""Simulated wall-clock time of synchronous rounds: what each node computes and sends, and who waits.

Each node ``i`` has a clock ``t_i``. In a round it computes its mini-batches
(``batches_i * step_time_s * slowdown_i``) and sends what the round made it send
(``bytes_i / bandwidth + latency`` when it sent anything); its messages are ready at
``ready_i = t_i + compute_i + comm_i``. A synchronous round then ends for node ``i`` when
the slowest peer it needs has delivered:

- gossip rounds: ``t_i <- max(ready_j for j in N_in(i) + {i})`` over the round's mixing matrix
  (a max-plus recursion: a straggler delays its neighbours at once and the rest of the graph
  hop by hop);
- rounds with a collective (all-reduce, server average, multicast): every node that is up waits
  for the slowest one, plus the server's send time for server rounds.

Time is split per node into compute, communication and waiting (``t_i`` minus the other two),
so a report shows where time went. Down nodes neither compute nor send and their clocks stand
still; a node that comes back catches up with its neighbours at the next round.

A collective pays one latency by default (``collective_latency: once``). With ``per_hop`` a ring
collective pays one per message in sequence on its critical path: ``2 (N - 1)`` for a ring all-reduce,
``N - 1`` for an all-gather (:mod:`peerlearn.world.runtime` models the same and predicts when gossip
beats an all-reduce); a gossip round's parallel sends still pay one.

With ``overlap`` (combine-then-adapt D-SGD only: it sends the models of the step before and computes its
gradient at them, so both happen at once; Lian et al., NeurIPS 2017) a gossip round's messages are ready
at ``t_i + max(compute_i, comm_i)``; a collective round still waits for its gradient. The seconds hidden
(``min(compute_i, comm_i)``) count as both compute and communication, not as waiting.

References:
    Lian et al., "Asynchronous Decentralized Parallel Stochastic Gradient Descent", ICML 2018
    (stragglers in synchronous decentralized rounds); Tyurin & Richtarik, "Optimal Time
    Complexities of Parallel Stochastic Optimization Methods Under a Fixed Computation Model",
    NeurIPS 2023 (heterogeneous per-worker compute times).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from peerlearn.topology.clique import Clique


def node_slowdowns(num_nodes: int, sigma: float = 0.0, straggler_fraction: float = 0.0,
                   straggler_slowdown: float = 10.0, seed: int = 0) -> np.ndarray:
    """Per-node compute time factors: log-normal spread ``exp(sigma * z)`` (median 1), and a fraction
    of stragglers ``straggler_slowdown`` times slower still."""
    rng = np.random.default_rng(seed)
    factor = np.exp(sigma * rng.standard_normal(num_nodes)) if sigma > 0 else np.ones(num_nodes)
    count = int(round(straggler_fraction * num_nodes))
    if count:
        factor[rng.choice(num_nodes, size=count, replace=False)] *= straggler_slowdown
    return factor


class Clock:
    """Per-node simulated time; :meth:`advance` once per round with what the round computed and sent."""

    def __init__(self, slowdown_N: np.ndarray, step_time_s: float = 0.05, bandwidth_Bps: float = 1.25e6,
                 latency_s: float = 0.05, collective_latency: str = "once", overlap: bool = False):
        if collective_latency not in ("once", "per_hop"):
            raise ValueError(f"clock.collective_latency must be 'once' or 'per_hop', got {collective_latency!r}")
        self.slowdown_N = np.asarray(slowdown_N, dtype=np.float64)
        self.step_time_s, self.bandwidth_Bps, self.latency_s = step_time_s, bandwidth_Bps, latency_s
        self.per_hop, self.overlap = collective_latency == "per_hop", overlap
        n = len(self.slowdown_N)
        self.t_N = np.zeros(n)
        self.compute_N = np.zeros(n)
        self.comm_N = np.zeros(n)
        self.hidden_N = np.zeros(n)  # seconds of communication done during computation (overlap)

    def advance(self, batches_N: np.ndarray, bytes_N: np.ndarray, W: sp.csr_array | None, collective: bool,
                server_bytes: float = 0.0, alive_N: np.ndarray | None = None, hops: int = 0) -> None:
        """One synchronous round. ``batches_N``/``bytes_N``: mini-batches processed and bytes sent by each
        node this round; ``W``: the round's mixing matrix (who waits for whom in a gossip round); ``hops``:
        messages in sequence on the round's ring collectives (charged a latency each with ``per_hop``)."""
        n = len(self.t_N)
        alive = np.ones(n, dtype=bool) if alive_N is None else np.asarray(alive_N, dtype=bool)
        compute, comm = self._costs(batches_N, bytes_N, alive)
        if collective and self.per_hop and hops > 1:
            comm = np.where(comm > 0, comm + (hops - 1) * self.latency_s, 0.0)
        if self.overlap and not collective:
            self.hidden_N += np.minimum(compute, comm)
            ready = self.t_N + np.maximum(compute, comm)
        else:
            ready = self.t_N + compute + comm
        if collective:
            server = server_bytes / self.bandwidth_Bps + self.latency_s if server_bytes > 0 else 0.0
            end = ready[alive].max() + server if alive.any() else 0.0
            comm = comm + np.where(alive, server, 0.0)
            new_t = np.where(alive, end, self.t_N)
        elif W is not None:
            new_t = self._row_max(W, np.where(alive, ready, -np.inf) if alive_N is not None else ready, ready)
            new_t = np.where(alive, new_t, self.t_N)
        else:
            new_t = np.where(alive, ready, self.t_N)
        self.t_N = new_t
        self.compute_N += compute
        self.comm_N += comm

    def _costs(self, batches_N: np.ndarray, bytes_N: np.ndarray, alive_N: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Each node's compute and communication seconds for ``batches_N`` mini-batches and ``bytes_N`` bytes
        (nothing for a node that is down)."""
        compute = batches_N * self.step_time_s * self.slowdown_N
        comm = bytes_N / self.bandwidth_Bps + self.latency_s
        if alive_N is None:
            return compute, np.where(bytes_N > 0, comm, 0.0)
        return np.where(alive_N, compute, 0.0), np.where(alive_N & (bytes_N > 0), comm, 0.0)

    def charge(self, batches_N: np.ndarray, bytes_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Charge each node for a piece of work done outside a synchronous round (the event engine's wakes):
        adds its compute and communication seconds to the node's totals and returns them."""
        compute, comm = self._costs(batches_N, bytes_N)
        self.compute_N += compute
        self.comm_N += comm
        return compute, comm

    def _row_max(self, W, sender_ready: np.ndarray, own_ready: np.ndarray) -> np.ndarray:
        """:func:`_row_max`, with W's row structure kept while the same W stays in force."""
        if isinstance(W, Clique):
            return _row_max(W, sender_ready, own_ready)
        if getattr(self, "_rows_of", (None,))[0] is not W:
            csr = sp.csr_array(W)
            zero = csr.data == 0
            nonempty = np.diff(csr.indptr) > 0
            self._rows_of = (W, csr.indices, zero if zero.any() else None, csr.indptr[:-1][nonempty], nonempty)
        _, cols, zero, starts, nonempty = self._rows_of
        out = own_ready.copy()
        if cols.size:  # reduceat over the slices of the non-empty rows (each runs to the next one's start)
            vals = sender_ready[cols]
            if zero is not None:
                vals[zero] = -np.inf
            out[nonempty] = np.maximum(out[nonempty], np.maximum.reduceat(vals, starts))
        return out

    def sync(self, dst: np.ndarray, src: np.ndarray) -> None:
        """Nodes ``dst`` (re)join by copying ``src``'s model: they take its time too."""
        self.t_N[dst] = np.maximum(self.t_N[dst], self.t_N[src])

    def metrics(self) -> dict[str, float]:
        """``sim_time_s`` (the latest node clock) and the per-node mean split into compute, comm and wait."""
        wait = np.maximum(self.t_N - self.compute_N - self.comm_N + self.hidden_N, 0.0)
        return {"sim_time_s": float(self.t_N.max(initial=0.0)), "sim_compute_s": float(self.compute_N.mean()),
                "sim_comm_s": float(self.comm_N.mean()), "sim_wait_s": float(wait.mean())}

    def state_dict(self) -> dict:
        return {"t_N": self.t_N.copy(), "compute_N": self.compute_N.copy(), "comm_N": self.comm_N.copy(),
                "hidden_N": self.hidden_N.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.t_N, self.compute_N, self.comm_N = (state[k].copy() for k in ("t_N", "compute_N", "comm_N"))
        self.hidden_N = state["hidden_N"].copy() if "hidden_N" in state else np.zeros_like(self.t_N)  # older runs


def _row_max(W: sp.csr_array | Clique, sender_ready: np.ndarray, own_ready: np.ndarray) -> np.ndarray:
    """``max(own_ready_i, max_{j: W_ij != 0} sender_ready_j)`` for every row i (in-neighbours in W)."""
    if isinstance(W, Clique):  # every member waits for the slowest member
        out = own_ready.copy()
        if W.off and W.num_members > 1:
            members = W.member_mask()
            out[members] = np.maximum(out[members], sender_ready[members].max())
        return out
    W = sp.csr_array(W)
    vals = np.where(W.data != 0, sender_ready[W.indices], -np.inf)
    out = own_ready.copy()
    nonempty = np.diff(W.indptr) > 0
    if vals.size:  # reduceat over the slices of the non-empty rows (each runs to the next one's start)
        row_max = np.maximum.reduceat(vals, W.indptr[:-1][nonempty])
        out[nonempty] = np.maximum(out[nonempty], row_max)
    return out


# ---------------------------------------------------------------------------------------------
# Spec (the clock: section)
# ---------------------------------------------------------------------------------------------
import functools  # noqa: E402
from typing import Callable, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.spec import GraphContext, Spec, config_error  # noqa: E402


class ClockSpec(Spec):
    """The simulated clock: per-node compute speeds, bandwidth and latency (Lian et al., ICML 2018)."""

    step_time_s: float = Field(0.05, ge=0.0, le=1e6, description="simulated seconds of one mini-batch step on a "
                               "reference node")
    bandwidth_mbps: float = Field(10.0, ge=1e-6, le=1e9, description="each node's upload bandwidth, megabits per second")
    latency_ms: float = Field(50.0, ge=0.0, le=1e9, description="one-way message latency, milliseconds")
    speed_sigma: float = Field(0.0, ge=0.0, le=10.0, description="log-normal spread of per-node compute speed (0: equal)")
    straggler_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of nodes that are stragglers")
    straggler_slowdown: float = Field(10.0, ge=1.0, le=1e6, description="how many times slower a straggler computes")
    slowdowns: list[float] | None = Field(None, description="each node's compute time factor, one per node "
                                          "(instead of speed_sigma and stragglers)")
    collective_latency: Literal["once", "per_hop"] = Field(
        "once", description="once: a collective round pays one latency; per_hop: a ring all-reduce pays 2 (N - 1) "
                            "and an all-gather N - 1, one per message in sequence (peerlearn.world.runtime)")
    overlap: bool = Field(False, description="a gossip round takes max(compute, comm) instead of their sum: the "
                          "models of the step before are sent while the gradient is computed (D-PSGD; needs "
                          "algorithm.order: cta)")
    slices_per_round: int = Field(4, ge=1, le=10_000, description="asynchronous algorithms: events in the same of this many "
                                  "slices of a round are batched together (more: finer timing, slower)")

    def check(self, cfg) -> None:
        order = getattr(cfg.algorithm, "order", None)
        if self.overlap and order != "cta":
            got = f"{cfg.algorithm.name}" + (f" with algorithm.order: {order}" if order else "")
            raise config_error("clock.overlap", "only combine-then-adapt D-SGD (algorithm.name: dsgd, algorithm.order: "
                                                "cta) sends the models its gradient is computed at, so only it can "
                                                f"communicate while it computes; got {got}")
        if self.slowdowns is not None:
            if len(self.slowdowns) != cfg.num_nodes or min(self.slowdowns) <= 0:
                raise config_error("clock.slowdowns", f"needs one positive factor per node ({cfg.num_nodes}), "
                                                      f"got {len(self.slowdowns)} values")
            if self.speed_sigma or self.straggler_fraction:
                raise config_error("clock.slowdowns", "give per-node slowdowns or speed_sigma/straggler_fraction, "
                                                      "not both")

    def build(self, ctx: GraphContext) -> Callable[[], Clock]:
        """A factory of the run's clock (per-node speeds drawn once, seeded): a fresh clock per run."""
        if self.slowdowns is not None:
            slowdown = np.asarray(self.slowdowns, dtype=np.float64)
        else:
            slowdown = node_slowdowns(ctx.num_nodes, self.speed_sigma, self.straggler_fraction,
                                      self.straggler_slowdown, seed=ctx.seed("clock"))
        return functools.partial(Clock, slowdown, step_time_s=self.step_time_s,
                                 bandwidth_Bps=self.bandwidth_mbps * 1e6 / 8, latency_s=self.latency_ms / 1e3,
                                 collective_latency=self.collective_latency, overlap=self.overlap)
