"""Shared-randomness SPSA ("Just One Byte"): nodes exchange one byte per perturbation, never a model.

Every round, each node ``i`` takes ``m`` random directions ``z_ik ~ N(0, I)`` and, on its mini-batch,
the two-point directional derivative ``p_ik = (L(theta + eps z_ik) - L(theta - eps z_ik)) / (2 eps)``.
It sends only ``p_ik``, quantised to one byte, to every other node. The directions come from a seed
every node knows (the round's), so each node regenerates every ``z_jk`` and applies the same step
``theta <- theta - lr * mean_jk(p_jk z_jk)`` (through the configured optimizer): the replicas stay
identical with ``m`` bytes sent per node and peer per round, whatever the model size.

Quantisation: ``p`` is clipped to ``[-c, c]`` and stochastically rounded to one of 255 levels
(unbiased inside the range). The range is shared without being sent: ``c`` starts at 1 and after
each round becomes three times the RMS of the values everyone just received.

The price is variance: a zeroth-order estimate from ``N m`` directions in ``P`` dimensions, so it
suits fine-tuning more than training from scratch (the paper fine-tunes language models).

References:
    Zelikman, Huang, Liang, Haber & Goodman, "Just One Byte (per gradient): A Note on Low-Bandwidth
    Decentralized Language Model Finetuning Using Shared Randomness", 2023;
    Spall, "Multivariate Stochastic Approximation Using a Simultaneous Perturbation Gradient
    Approximation", IEEE TAC 1992 (SPSA).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from peerlearn.compressors.quantize import stochastic_round
from peerlearn.device import draw
from peerlearn.rng import step_generator
from peerlearn.types import Algorithm, Tensor, Transform

LEVELS = 127  # int8 codes -127..127: one byte per scalar


class SpsaState(NamedTuple):
    opt_state: Any
    round: int = 0
    scale: float = 1.0  # the quantiser's range c, the same at every node


def directional_derivatives(loss_fn: Callable, params_NP: Tensor, z_NMP: Tensor, batch, eps: float) -> tuple[Tensor, Tensor]:
    """``(p_NM, loss_N)``: two-point estimates of ``z . grad L`` for each node's directions on its batch,
    and the mean of the two losses."""
    m = z_NMP.shape[1]
    probes = torch.cat([params_NP[:, None] + eps * z_NMP, params_NP[:, None] - eps * z_NMP], 1)  # N, 2M, P
    losses = loss_fn(probes, *batch)  # N, 2M
    return (losses[:, :m] - losses[:, m:]) / (2 * eps), losses.mean(1)


def quantize(p: Tensor, scale: float, generator: torch.Generator, comm=None) -> Tensor:
    """``p`` clipped to ``[-scale, scale]`` and stochastically rounded to ``2 LEVELS + 1`` levels (one byte);
    with ``comm``, ``p`` holds its rows and the rounding is drawn for every node (a rank keeps its own)."""
    r = (p / scale).clamp(-1.0, 1.0) * LEVELS
    if comm is None or comm.node_ids is None:
        return stochastic_round(r, generator) * (scale / LEVELS)
    u = comm.own(draw(torch.rand, comm.num_global, *r.shape[1:], generator=generator, dtype=r.dtype))
    low = r.floor()
    return (low + (u < r - low).to(r.dtype)) * (scale / LEVELS)


def spsa(optimizer: Transform, loss_fn: Callable, num_perturbations: int = 1, eps: float = 1e-3,
         seed: int = 0) -> Algorithm:
    """Shared-randomness SPSA with ``num_perturbations`` directions per node and round.

    ``loss_fn(params_NMP, x_NB, y_NB) -> loss_NM``: each node's loss at each of its probe points.
    """
    if num_perturbations < 1:
        raise ValueError(f"algorithm.spsa_perturbations must be >= 1, got {num_perturbations}")
    if eps <= 0:
        raise ValueError(f"algorithm.spsa_epsilon must be > 0, got {eps}")

    def init(params_NP):
        return SpsaState(optimizer.init(params_NP))

    def step(state, params_NP, batches, grad_fn, comm):
        round_ = state.round + 1
        n, num_params = comm.num_global, params_NP.shape[1]
        shared = step_generator(seed, round_)  # every node can regenerate these
        z = draw(torch.randn, n, num_perturbations, num_params, generator=shared, dtype=params_NP.dtype)
        p, loss = directional_derivatives(loss_fn, params_NP, comm.own(z), batches.next(), eps)
        own = step_generator(seed, round_ + 500_000_009)  # each node's rounding
        p = quantize(p, state.scale, own, comm)
        received, senders = comm.all_gather(p, message_bytes=num_perturbations)  # m bytes to every peer
        if len(senders) == 0:
            return params_NP, SpsaState(state.opt_state, round_, state.scale), {"loss": float("nan")}
        estimate = torch.einsum("rm,rmp->p", received, z[senders]) / received.numel()
        updates, opt_state = optimizer.update(estimate.expand_as(params_NP), state.opt_state, params_NP)
        rms = float(received.pow(2).mean().sqrt())
        scale = 3.0 * rms if rms > 0 else state.scale
        return params_NP + updates, SpsaState(opt_state, round_, scale), {"loss": float(loss.mean())}

    return Algorithm(init, step)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: spsa)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, SYNC, Capabilities, Optimized, Synchronous  # noqa: E402


@ALGORITHMS.register
class SpsaSpec(Optimized, Synchronous):
    """Shared-randomness SPSA: one quantised byte per direction (Zelikman et al., "Just One Byte", 2023)."""

    name: Literal["spsa"] = "spsa"
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "it shares one-byte projections in a trusted all-gather; their poisoning is not modelled yet",
        "privacy": "noise on the projections is not built yet"}
    spsa_perturbations: int = Field(1, ge=1, le=10_000, description="random directions per node and round (one byte sent "
                                    "to every peer for each)")
    spsa_epsilon: float = Field(1e-3, gt=0.0, description="probe distance of the two-point estimate")
    capabilities: ClassVar = Capabilities(engines=SYNC | {"p2p"}, global_model=True)  # all-gathers on a swarm too

    def build(self, ctx):
        return spsa(self.transform(), ctx.probe_loss_fn, self.spsa_perturbations, self.spsa_epsilon,
                    seed=ctx.seed("spsa"))
