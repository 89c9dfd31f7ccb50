"""DiLoCo: H inner optimizer steps, then an outer Nesterov step on the averaged pseudo-gradient.

Each node starts the round from its anchor ``theta_i``, runs H inner steps (AdamW in the
paper), and the trained models are combined: an all-reduce (the paper's setting) or one
gossip step over the round's graph. The pseudo-gradient is ``Delta_i = theta_i - combined_i``
(with an all-reduce, the average of the nodes' ``theta - theta_i^H``), and the outer optimizer
(SGD with Nesterov momentum) updates the anchor: ``theta_i <- OuterOpt(theta_i, Delta_i)``.
Inner optimizer state persists across rounds. Outer lr 1 without momentum is local SGD
(periodic averaging), and with H = 1 and inner SGD it is synchronous data-parallel SGD.

References:
    Douillard et al., "DiLoCo: Distributed Low-Communication Training of Language Models", 2023
    (H = 500, outer lr 0.7, Nesterov momentum 0.9);
    Stich, "Local SGD Converges Fast and Communicates Little", ICLR 2019 (local SGD).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from peerlearn.algorithms.local import local_steps
from peerlearn.optim import sgd
from peerlearn.types import Algorithm, Transform


class DilocoState(NamedTuple):
    inner_state: Any
    outer_state: Any


def diloco(inner: Transform, num_inner_steps: int = 1, outer_lr: float = 0.7, outer_momentum: float = 0.9,
           nesterov: bool = True, combine: str = "all_reduce") -> Algorithm:
    """DiLoCo with ``num_inner_steps`` (H) inner steps per round; ``combine``: ``all_reduce`` or ``gossip``."""
    if combine not in ("all_reduce", "gossip"):
        raise ValueError(f"algorithm.combine must be 'all_reduce' or 'gossip', got {combine!r}")
    outer = sgd(outer_lr, momentum=outer_momentum, nesterov=nesterov and outer_momentum > 0)

    def init(params_NP):
        return DilocoState(inner.init(params_NP), outer.init(params_NP))

    def step(state, params_NP, batches, grad_fn, comm):
        trained, inner_state, loss = local_steps(params_NP, state.inner_state, inner, batches, grad_fn,
                                                 num_inner_steps)
        combined = comm.all_reduce_mean(trained).expand_as(trained) if combine == "all_reduce" else comm.mix(trained)
        updates, outer_state = outer.update(params_NP - combined, state.outer_state, params_NP)
        return params_NP + updates, DilocoState(inner_state, outer_state), {"loss": float(loss.mean())}

    return Algorithm(init, step)


def local_sgd(optimizer: Transform, num_local_steps: int = 1) -> Algorithm:
    """Local SGD: ``num_local_steps`` local steps, then every node takes the all-reduced average.

    DiLoCo with outer learning rate 1 and no outer momentum.
    """
    return diloco(optimizer, num_local_steps, outer_lr=1.0, outer_momentum=0.0, nesterov=False)
