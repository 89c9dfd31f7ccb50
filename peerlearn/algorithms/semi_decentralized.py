"""Semi-decentralized learning: gossip, plus a server that periodically averages a sampled subset.

Every ``period`` rounds, after the wrapped algorithm's round, a fraction of the nodes uploads
its models and the server averages them. Sampled-to-sampled (S2S) returns the average to the
sampled nodes only; sampled-to-all (S2A) broadcasts it to every node.

References:
    Rodio, Neglia, Chen & Larsson, "A Unified Convergence Analysis for Semi-Decentralized Learning:
    Sampled-to-Sampled vs. Sampled-to-All Communication", 2025.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from peerlearn.algorithms.final_merge import inner_hooks
from peerlearn.types import Algorithm


class SemiState(NamedTuple):
    inner: Any
    round: int


def with_server_rounds(algorithm: Algorithm, period: int, fraction: float, broadcast: str = "sampled",
                       seed: int = 0) -> Algorithm:
    """Add a server aggregation every ``period`` rounds to ``algorithm``; ``broadcast``: ``sampled`` or ``all``."""
    from peerlearn.algorithms.fedavg import sample_clients  # here: importing fedavg registers it, keep list order

    if broadcast not in ("sampled", "all"):
        raise ValueError(f"algorithm.server_broadcast must be 'sampled' or 'all', got {broadcast!r}")

    def init(params_NP):
        return SemiState(algorithm.init(params_NP), 0)

    def step(state, params_NP, batches, grad_fn, comm):
        params_NP, inner, metrics = algorithm.step(state.inner, params_NP, batches, grad_fn, comm)
        round_ = state.round + 1
        if round_ % period == 0:
            n = comm.num_global
            sampled = sample_clients(n, fraction, seed, round_)
            to = sampled if broadcast == "sampled" else torch.arange(n)
            at, rows = comm.mine(sampled)  # the sampled nodes held here (all of them in the simulator)
            average = comm.server_average(params_NP[at], rows, broadcast_to=to)
            if average is not None:  # None: every sampled node was down
                params_NP = params_NP.clone()
                params_NP[comm.mine(to)[0]] = average
        return params_NP, SemiState(inner, round_), metrics

    return Algorithm(init, step, *inner_hooks(algorithm))


# ---------------------------------------------------------------------------------------------
# Spec base (algorithm.server_period ...): the gossip algorithms that may add server rounds combine it
# ---------------------------------------------------------------------------------------------
from typing import Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.algorithms.base import AlgorithmSpec  # noqa: E402
from peerlearn.spec import BuildContext  # noqa: E402


class ServerRounds(AlgorithmSpec):
    """Semi-decentralized: a server averages a sample every ``server_period`` rounds (Rodio et al., 2025)."""

    server_period: int = Field(0, ge=0, description="a server averages a sample every this many rounds (0 = never)")
    server_fraction: float = Field(0.25, gt=0.0, le=1.0, description="fraction of nodes sampled by the server")
    server_broadcast: Literal["sampled", "all"] = Field("sampled", description="the average goes back to the "
                                                        "sampled nodes (S2S) or to all (S2A)")

    @property
    def uses_server(self) -> bool:
        return bool(self.server_period)

    def make(self, ctx: BuildContext) -> Algorithm:
        algo = super().make(ctx)
        if self.server_period:
            algo = with_server_rounds(algo, self.server_period, self.server_fraction, self.server_broadcast,
                                      seed=ctx.seed("server"))
        return algo
