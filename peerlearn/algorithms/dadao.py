"""DADAO: decoupled accelerated decentralized asynchronous optimization.

Gradient steps and communications are independent Poisson point processes: every node takes gradient steps at
rate ``grad_rate`` and every edge of the (static) graph communicates at rate ``comm_rate / |E|``, with no
gradient tracking, error feedback or multi-consensus. Between its events a node's six variables
``(x, x~, y, y~, z, z~)`` follow a linear ODE (its momentum, in closed form: ``exp(M dt)`` with a 6 x 6 matrix
``M``); at a gradient event at node i, with ``g = grad f_i(x_i) - nu x_i - y~_i``::

    x_i -= gamma g,   x~_i -= gamma~ g,   y~_i += (delta + delta~) g

and at an event on edge (i, j), with ``m = (y_i + z_i) - (y_j + z_j)`` (what the two nodes exchange)::

    z_i -= beta m,   z~_i -= beta~ m,   z_j += beta m,   z~_j += beta~ m.

The constants follow the paper from ``mu`` (strong convexity), ``L`` (smoothness) and ``chi_1`` of the
edge-rate-weighted Laplacian (``nu = mu / 2``, ``gamma = 1 / 4L``, ``beta = 1/2``, ``beta~ = 2 chi_1 sqrt(L / nu)``,
the ODE's rates ``sqrt(nu / L) / 4`` and ``/ 8``, ...), so the method converges linearly at a rate proportional to
``sqrt(mu / L)`` per unit of time (accelerated) with ``O(n sqrt(L / mu))`` gradients and
``O(n sqrt(chi_1 chi_2) sqrt(L / mu))`` communications. Each node minimises its loss plus ``(mu / 2) ||x||^2`` (so
that ``mu`` holds); ``smoothness`` is the user's bound on L. The default ``comm_rate`` is the paper's
``sqrt(2 chi_1 chi_2)`` of the uniform edge-probability Laplacian.

A round is one unit of continuous time; its events are drawn from the round's seed and played one at a time, in
time order, each node's ODE flowed to the event's time first (exact, not sliced: two events on one node in the
same slice made the sliced form unstable). A message is ``y + z``, P floats, one each way per edge event.
Event by event, it suits small networks and models; it runs on the simulator only.

References:
    Nabli & Oyallon, "DADAO: Decoupled Accelerated Decentralized Asynchronous Optimization", ICML 2023
    (arXiv:2208.00779); the authors' reference implementation (AdelNabli/DADAO) was read for the constants.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from peerlearn.types import Algorithm, Tensor

X, XT, Y, YT, Z, ZT = range(6)


class DadaoState(NamedTuple):
    aux: Tensor  # [5, N, P]: x~, y, y~, z, z~ (x is the model)
    round: int


class DadaoConstants(NamedTuple):
    nu: float
    M: Tensor  # the 6 x 6 linear ODE between events
    gamma: float
    gamma_t: float
    delta: float
    delta_t: float
    beta: float
    beta_t: float


def dadao_constants(mu: float, smoothness: float, chi_1: float) -> DadaoConstants:
    """The paper's constants from ``mu``, ``L`` and ``chi_1`` of the edge-rate Laplacian."""
    if not 0.0 < mu <= smoothness:
        raise ValueError(f"algorithm.mu must be in (0, smoothness={smoothness}], got {mu}")
    nu = mu / 2
    r = math.sqrt(nu / smoothness)
    alpha, alpha_t, eta, theta = r / 4, r / 8, r / 8, 1 / (2 * r)
    M = torch.zeros(6, 6, dtype=torch.float64)
    M[X, X], M[X, XT], M[XT, X], M[XT, XT] = -eta, eta, eta, -eta
    M[Y, Y], M[Y, YT] = -alpha, alpha
    M[YT, XT], M[YT, Y], M[YT, Z] = -theta * nu, -theta, -theta
    M[Z, Z], M[Z, ZT], M[ZT, Z], M[ZT, ZT] = -alpha, alpha, alpha_t, -alpha_t
    return DadaoConstants(nu, M, 1 / (4 * smoothness), 1 / (4 * math.sqrt(smoothness * nu)), r / 4, 1.0, 0.5,
                          2 * chi_1 / r)


def graph_rates(edges_E2: np.ndarray, num_nodes: int, comm_rate: float | None) -> tuple[float, float]:
    """``(comm_rate, chi_1)``: the total communication rate (default the paper's ``sqrt(2 chi_1 chi_2)`` of the
    uniform edge-probability Laplacian) and ``chi_1`` of the rate-weighted Laplacian ``Lambda``."""
    import scipy.linalg

    e = len(edges_E2)
    lap = np.zeros((num_nodes, num_nodes))
    for i, j in edges_E2:
        lap[i, i] += 1
        lap[j, j] += 1
        lap[i, j] -= 1
        lap[j, i] -= 1
    probs = lap / e
    eig = np.linalg.eigvalsh(probs)
    if eig[1] <= 1e-12:
        raise ValueError("algorithm.name: dadao needs a connected graph")
    chi_1 = 1 / eig[1]
    if comm_rate is None:
        pinv = scipy.linalg.pinv(probs)
        chi_2 = max(0.5 * (pinv[i, i] + pinv[j, j] - 2 * pinv[i, j]) for i, j in edges_E2)
        comm_rate = math.sqrt(2 * chi_1 * chi_2)
    return comm_rate, chi_1 / comm_rate  # Lambda = comm_rate * probs


def dadao(constants: DadaoConstants, edges_E2: np.ndarray, comm_rate: float, grad_rate: float = 1.0,
          l2: float = 0.0, seed: int = 0) -> Algorithm:
    """DADAO (module doc) over the undirected ``edges_E2``, one round per unit of time; ``l2``: the
    ``(mu / 2) ||x||^2`` added to every node's loss (its gradient ``l2 * x``)."""
    from peerlearn.rng import step_generator

    k = constants
    edges = torch.as_tensor(np.asarray(edges_E2, dtype=np.int64))
    edge_rate = comm_rate / max(len(edges), 1)

    def flow(v_6P: Tensor, dt: float) -> Tensor:
        """The node's six variables after ``dt`` of the ODE (exact: ``exp(M dt)``)."""
        if dt <= 0:
            return v_6P
        return (torch.linalg.matrix_exp(k.M * dt).to(v_6P.dtype) @ v_6P.reshape(6, -1)).reshape(v_6P.shape)

    def init(params_NP):
        return DadaoState(torch.zeros(5, *params_NP.shape, dtype=params_NP.dtype), 0)

    def step(state, params_NP, batches, grad_fn, comm):
        n, p = params_NP.shape
        round_ = state.round + 1
        g = step_generator(seed, round_)
        V = torch.cat([params_NP[None], state.aux])  # [6, N, P], a new tensor
        grad_counts = torch.poisson(torch.full((n,), grad_rate, dtype=torch.float64), generator=g).long()
        edge_counts = torch.poisson(torch.full((len(edges),), edge_rate, dtype=torch.float64), generator=g).long()
        kinds = torch.cat([torch.zeros(int(grad_counts.sum()), dtype=torch.long),
                           torch.ones(int(edge_counts.sum()), dtype=torch.long)])
        who = torch.cat([torch.repeat_interleave(torch.arange(n), grad_counts),
                         torch.repeat_interleave(torch.arange(len(edges)), edge_counts)])
        times = torch.rand(len(kinds), generator=g, dtype=torch.float64)
        last = torch.zeros(n, dtype=torch.float64)
        losses = []
        sent = torch.zeros(n, dtype=torch.float64)
        for idx in torch.argsort(times).tolist():
            t, kind, w = float(times[idx]), int(kinds[idx]), int(who[idx])
            nodes = [w] if kind == 0 else edges[w].tolist()
            for i in nodes:
                V[:, i] = flow(V[:, i], t - float(last[i]))
                last[i] = t
            if kind == 0:
                x = V[X, w]
                loss, grad = grad_fn(x[None], batches.next(torch.tensor([w])))
                losses.append(float(loss[0]))
                d = grad[0] + l2 * x - k.nu * x - V[YT, w]
                V[X, w] = x - k.gamma * d
                V[XT, w] -= k.gamma_t * d
                V[YT, w] += (k.delta + k.delta_t) * d
            else:
                i, j = nodes
                m = (V[Y, i] + V[Z, i]) - (V[Y, j] + V[Z, j])
                V[Z, i] -= k.beta * m
                V[ZT, i] -= k.beta_t * m
                V[Z, j] += k.beta * m
                V[ZT, j] += k.beta_t * m
                sent[i] += 1
                sent[j] += 1
        for i in range(n):  # every node to the end of the round
            V[:, i] = flow(V[:, i], 1.0 - float(last[i]))
        comm.bytes_sent_N += sent * p * params_NP.element_size()  # y + z, each way per edge event
        metrics = {"loss": float(np.mean(losses)) if losses else math.nan, "gradient_events": float(grad_counts.sum()),
                   "communication_events": float(edge_counts.sum())}
        return V[X].clone(), DadaoState(V[1:].clone(), round_), metrics

    return Algorithm(init, step)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: dadao)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, Capabilities, AlgorithmSpec, config_error  # noqa: E402


@ALGORITHMS.register
class DadaoSpec(AlgorithmSpec):
    """DADAO: gradient steps and gossip as independent Poisson processes per node and per edge, accelerated, with
    no gradient tracking (Nabli & Oyallon, ICML 2023)."""

    name: Literal["dadao"] = "dadao"
    mu: float = Field(0.01, gt=0.0, le=1e6, description="strong convexity: each node's loss gets (mu/2)||x||^2 added")
    smoothness: float = Field(1.0, gt=0.0, le=1e9, description="L, a bound on the smoothness of each node's loss "
                              "(with the mu term); sets the step sizes (lr is not used)")
    grad_rate: float = Field(1.0, gt=0.0, le=1e4, description="gradient steps per node per round (Poisson rate)")
    comm_rate: float | None = Field(None, gt=0.0, le=1e7, description="communications per round over the whole "
                                    "graph (Poisson, spread evenly over the edges); default the paper's "
                                    "sqrt(2 chi_1 chi_2)")
    why_not: ClassVar = {"attack": "its messages are dual variables exchanged on edge events, not models",
                         "privacy": "noise on its dual variables is not modelled"}
    capabilities: ClassVar = Capabilities(engines=frozenset({"simulator"}), static_topology=True)

    @property
    def extra_copies(self) -> int:  # x~, y, y~, z, z~
        return 5

    def check(self, cfg) -> None:
        super().check(cfg)
        if self.mu > self.smoothness:
            raise config_error("algorithm.mu", f"strong convexity must not exceed the smoothness "
                                               f"({self.smoothness}), got {self.mu}")
        if cfg.num_nodes > 4096:
            raise config_error("num_nodes", f"dadao plays its events one at a time and solves its graph's Laplacian "
                                            f"densely: at most 4096 nodes, got {cfg.num_nodes}")

    def build(self, ctx):
        import scipy.sparse as sp

        from peerlearn.topology.clique import as_csr

        adj = sp.triu(as_csr(ctx.adjacency), k=1).tocoo()
        edges = np.stack([adj.row, adj.col], 1).astype(np.int64)
        try:
            rate, chi_1 = graph_rates(edges, ctx.num_nodes, self.comm_rate)
        except ValueError as err:
            raise config_error("topology.graph", str(err).split(": ", 1)[1]) from None
        return dadao(dadao_constants(self.mu, self.smoothness, chi_1), edges, rate, self.grad_rate, l2=self.mu,
                     seed=ctx.seed("dadao"))
