"""Federated Averaging: a server samples clients, they train locally, the server averages.

Each round a fraction ``fraction`` of the N clients (at least one) is drawn without
replacement; each starts from the global model with a fresh optimizer state, runs
``num_local_steps`` steps, uploads its model, and the server sets the global model to their
average weighted by client data size. Every row then holds the global model (what any
client would download next); bytes count uploads by the sampled clients and the server's
download to them. ``fraction = 1`` with one step is synchronous SGD on model averages.

References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
    AISTATS 2017.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from peerlearn.algorithms.local import local_steps
from peerlearn.device import draw
from peerlearn.rng import step_generator
from peerlearn.types import Algorithm, Tensor, Transform


class FedAvgState(NamedTuple):
    round: int


def round_permutation(num_nodes: int, seed: int, round_: int) -> Tensor:
    """A random order of the nodes for one round: a pure function of (seed, round)."""
    g = step_generator(seed, round_)
    return draw(torch.randperm, num_nodes, generator=g)


def sample_clients(num_nodes: int, fraction: float, seed: int, round_: int) -> Tensor:
    """The sorted client indices of one round: a pure function of (seed, round)."""
    k = max(1, math.ceil(fraction * num_nodes))
    return round_permutation(num_nodes, seed, round_)[:k].sort().values


def fedavg(optimizer: Transform, num_local_steps: int = 1, fraction: float = 1.0,
           data_sizes_N: Tensor | None = None, seed: int = 0) -> Algorithm:
    """Federated Averaging: sampled clients train locally; a server averages them weighted by data size."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"algorithm.fraction must be in (0, 1], got {fraction}")

    def init(params_NP):
        return FedAvgState(0)

    def step(state, params_NP, batches, grad_fn, comm):
        sampled = sample_clients(comm.num_global, fraction, seed, state.round)
        at, rows = comm.mine(sampled)  # the sampled clients held here (all of them in the simulator)
        start_RP = params_NP[at]
        trained_RP, _, loss_R = local_steps(start_RP, optimizer.init(start_RP), optimizer, batches, grad_fn,
                                            num_local_steps, at)
        weights = None if data_sizes_N is None else data_sizes_N[rows]
        global_P = comm.server_average(trained_RP, rows, weights)
        out = params_NP if global_P is None else global_P.expand_as(params_NP).clone()  # None: no client was up
        return out, FedAvgState(state.round + 1), {
            "loss": comm.node_mean(loss_R), "clients": float(len(sampled))}

    return Algorithm(init, step)


# ---------------------------------------------------------------------------------------------
# Specs (algorithm.name: fedavg, fedprox)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, SYNC, Capabilities, LocalSteps, Synchronous, weights  # noqa: E402


@ALGORITHMS.register
class FedAvgSpec(LocalSteps, Synchronous):
    """Federated Averaging with a server (McMahan et al., AISTATS 2017): the centralized baseline."""

    name: Literal["fedavg"] = "fedavg"
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="fraction of clients sampled per round")
    weighting: Literal["data_size", "uniform"] = Field("data_size", description="weight nodes by their data size "
                                                                                "or equally")
    capabilities: ClassVar = Capabilities(engines=SYNC | {"p2p"}, global_model=True)
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "its clients upload to a trusted server average; Byzantine clients are not modelled yet",
        "privacy": "DP-FedAvg (clipped client updates, server noise) is not built yet"}

    def build(self, ctx):
        return fedavg(self.transform(), self.num_local_steps, self.fraction, weights(self, ctx),
                      seed=ctx.seed("fedavg"))


@ALGORITHMS.register
class FedProxSpec(FedAvgSpec):
    """FedProx: FedAvg with a proximal term mu/2 ||x - x_global||^2 (Li et al., MLSys 2020)."""

    name: Literal["fedprox"] = "fedprox"
    prox_mu: float = Field(0.01, ge=0.0, description="weight of the proximal term")

    def transform(self):
        from peerlearn.optim import proximal

        return proximal(super().transform(), self.prox_mu)
