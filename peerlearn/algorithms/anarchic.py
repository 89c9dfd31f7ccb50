"""Anarchic Federated Learning (AFA-CD / AFA-CS): each worker decides when it joins and how much it works.

Every node has its own policy, drawn once from the config and fixed for the run: it takes part in a round
with probability ``p_i`` and then runs ``K_i`` local steps. A worker starts from the global model it last
downloaded (the model of its previous participation: it is stale by the rounds it skipped), sends its
update ``Delta_i = x_i^K - x_i^0`` and downloads the new global model. The server normalises each update
by the work behind it and applies two-sided learning rates (local ``lr``, server ``server_lr``)::

    G_i = Delta_i / K_i                         (minus lr times the average of the worker's K_i gradients)
    x^{t+1} = x^t + server_lr * mean_{i in M_t} G_i                                          (AFA-CD)
    x^{t+1} = x^t + server_lr * mean_{i ever seen} G_i^latest                                 (AFA-CS)

AFA-CS (cross-silo) reuses every worker's latest update, so the step is an average over all workers
however few arrive in a round (one N x P tensor of memory at the server). AFA-CD averages whoever arrives,
so workers that join more often weigh more: on a quadratic with participation from 0.2 to 1 it settles
20x further from the optimum than AFA-CS (``tests/algorithms/test_anarchic.py``). Normalising by ``K_i`` keeps
the workers that do more steps from pulling the model towards their own objective (the objective
inconsistency of plain averaging under heterogeneous work); ``normalize: false`` averages the raw updates
instead, which is FedAvg under the same anarchy (``server_lr = 1``: the mean of the arrived models when
none is stale), the baseline the paper compares with. With every worker taking part every round and doing
the same ``K`` steps, AFA-CD with ``server_lr = K`` equals FedAvg with all clients and uniform weights.

References:
    Yang, Zhang, Fang & Liu, "Anarchic Federated Learning", ICML 2022 (AFA-CD, AFA-CS, two-sided
    learning rates, linear speed-up under arbitrary participation and local steps).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from peerlearn.algorithms.local import local_steps
from peerlearn.device import draw
from peerlearn.rng import step_generator
from peerlearn.types import Algorithm, Tensor, Transform


class AnarchicState(NamedTuple):
    round: int
    downloaded_NP: Tensor  # the global model each worker last downloaded (its next start)
    latest_NP: Tensor | None  # AFA-CS: each worker's latest normalised update (zeros before its first)
    seen_N: Tensor | None  # AFA-CS: which workers have sent one


def anarchic(optimizer: Transform, participation_N: Tensor, steps_N: Tensor, server_lr: float = 1.0,
             reuse_updates: bool = False, normalize: bool = True, seed: int = 0) -> Algorithm:
    """Anarchic FL with per-node participation probabilities ``participation_N`` and local step counts
    ``steps_N`` (ints >= 1); ``reuse_updates``: AFA-CS, else AFA-CD; ``normalize``: divide updates by ``K_i``."""
    if bool((steps_N < 1).any()):
        raise ValueError("algorithm.steps_min: every node needs at least one local step")
    if bool(((participation_N <= 0) | (participation_N > 1)).any()):
        raise ValueError("algorithm.participation_min: participation probabilities must be in (0, 1]")

    def init(params_NP):
        memory = torch.zeros_like(params_NP) if reuse_updates else None
        seen = torch.zeros(params_NP.shape[0], dtype=torch.bool) if reuse_updates else None
        return AnarchicState(0, params_NP.clone(), memory, seen)

    def step(state, params_NP, batches, grad_fn, comm):
        n = comm.num_global
        joined = draw(torch.rand, n, generator=step_generator(seed, state.round), dtype=torch.float64) < participation_N
        if comm.alive_N is not None:  # a worker that is down does not join
            joined &= comm.alive_N
        sampled = torch.nonzero(joined).flatten()
        global_P = params_NP[0]
        info = {"loss": float("nan"), "clients": float(len(sampled))}
        if len(sampled) == 0:
            return params_NP, state._replace(round=state.round + 1), info
        at, rows = comm.mine(sampled)  # the workers that joined, held here (all of them in the simulator)
        update_RP = torch.empty(len(rows), params_NP.shape[1], dtype=params_NP.dtype)
        loss_R = torch.empty(len(rows), dtype=torch.float64)
        k_R = steps_N[rows]
        for k in torch.unique(steps_N[sampled]).tolist():  # workers with the same effort train together
            sel = torch.nonzero(k_R == k).flatten()
            group = at[sel]
            start_GP = state.downloaded_NP[group]
            trained, _, loss = local_steps(start_GP, optimizer.init(start_GP), optimizer, batches, grad_fn, k, group)
            update_RP[sel] = (trained - start_GP) / k if normalize else trained - start_GP
            loss_R[sel] = loss
        downloaded, latest, seen = state.downloaded_NP, state.latest_NP, state.seen_N
        if reuse_updates:
            latest[at], seen[at] = update_RP, True  # the server's memory (its own, not sent again)
        mean_P = comm.server_average(update_RP, rows)
        if reuse_updates:
            mean_P = comm.rows_mean(latest[seen])
        new_P = global_P + server_lr * mean_P.reshape(-1)
        downloaded[at] = new_P  # the workers that joined download the new model
        info["loss"] = comm.node_mean(loss_R)
        return new_P.expand_as(params_NP).clone(), AnarchicState(state.round + 1, downloaded, latest, seen), info

    return Algorithm(init, step)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: anarchic)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, SYNC, Capabilities, LocalSteps, config_error  # noqa: E402


@ALGORITHMS.register
class AnarchicSpec(LocalSteps):
    """Anarchic FL (Yang et al., ICML 2022): each worker picks when it joins and how many local steps it runs;
    the server normalises by the work and applies two-sided learning rates (AFA-CD, or AFA-CS)."""

    name: Literal["anarchic"] = "anarchic"
    variant: Literal["cd", "cs"] = Field("cd", description="cd: average the updates that arrive; cs: average every "
                                                           "worker's latest update (server memory)")
    server_lr: float = Field(1.0, gt=0.0, le=1e6, description="the server's learning rate on the averaged "
                             "normalised update (two-sided learning rates)")
    participation_min: float = Field(1.0, gt=0.0, le=1.0, description="each node joins a round with a probability "
                                     "drawn once, uniformly in [participation_min, participation_max]")
    participation_max: float = Field(1.0, gt=0.0, le=1.0, description="see participation_min")
    steps_min: int | None = Field(None, ge=1, le=100_000, description="each node's local steps, drawn once uniformly "
                                  "in [steps_min, num_local_steps] (default: num_local_steps for all)")
    normalize: bool = Field(True, description="divide each update by its number of local steps (false: plain "
                                              "averaging, FedAvg under the same anarchy)")
    capabilities: ClassVar = Capabilities(engines=SYNC | {"p2p"}, global_model=True)
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "its workers upload to a trusted server average; Byzantine workers are not modelled yet",
        "privacy": "its server averages clean updates; DP for the server's memory is not built yet"}

    def check(self, cfg) -> None:
        super().check(cfg)
        if self.participation_min > self.participation_max:
            raise config_error("algorithm.participation_min", f"must be at most participation_max="
                                                              f"{self.participation_max}, got {self.participation_min}")
        if self.steps_min is not None and self.steps_min > self.num_local_steps:
            raise config_error("algorithm.steps_min", f"must be at most num_local_steps={self.num_local_steps}, "
                                                      f"got {self.steps_min}")

    @property
    def extra_copies(self) -> int:  # the models the workers downloaded; AFA-CS: the server's latest updates
        return 1 + int(self.variant == "cs")

    def policies(self, ctx) -> tuple[Tensor, Tensor]:
        """Each node's (participation probability, local steps), drawn from the run's seed."""
        g = torch.Generator().manual_seed(ctx.seed("anarchic"))
        n = ctx.num_nodes
        lo, hi = self.participation_min, self.participation_max
        p_N = lo + (hi - lo) * draw(torch.rand, n, generator=g, dtype=torch.float64)
        k_lo = self.num_local_steps if self.steps_min is None else self.steps_min
        k_N = draw(torch.randint, k_lo, self.num_local_steps + 1, (n,), generator=g)
        return p_N, k_N

    def build(self, ctx):
        p_N, k_N = self.policies(ctx)
        return anarchic(self.transform(), p_N, k_N, self.server_lr, self.variant == "cs", self.normalize,
                        seed=ctx.seed("anarchic_rounds"))
