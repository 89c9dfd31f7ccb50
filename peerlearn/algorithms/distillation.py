"""Decentralized distillation: nodes share predictions on a public unlabeled set, never weights.

Each round every node trains on its own data, then predicts a batch of a public unlabeled set (a seeded slice of
the training inputs, the same at every node; their labels are never used), sends its predictions to its
neighbours, and takes ``distill_steps`` steps towards its neighbours' mixed predictions (cross-entropy with the
mixing-weighted average of their softmax outputs as soft targets, weight ``distill_weight``). A node's predictions
already carry what its neighbours taught it, so knowledge reaches nodes several hops away with no model ever
sent: a message is ``batch x classes`` floats. ``acc_local_*`` judges each node on its own task.

This is the single-head form. The paper gives each model auxiliary heads, head k distilling from neighbours'
head k-1, so that knowledge several hops away is not diluted by the nearer teachers; that multi-head variant
(and its teacher selection) is not built here.

References:
    Zhmoginov, Sandler, Miller, Kristiansen & Vladymyrov, "Decentralized Learning with Multi-Headed
    Distillation", CVPR 2023.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from peerlearn.algorithms.local import local_steps
from peerlearn.optim import apply_update
from peerlearn.types import Algorithm, Tensor, Transform


class DistillState(NamedTuple):
    opt_state: Any
    round: int


def distillation(optimizer: Transform, logits_fn: Callable, soft_grad_fn: Callable, public_x: Tensor,
                 num_local_steps: int = 1, distill_steps: int = 1, public_batch: int = 64,
                 distill_weight: float = 1.0, seed: int = 0) -> Algorithm:
    """Prediction sharing on a public set (module doc). ``logits_fn(params_NP, x_B) -> logits_NBC`` (one batch for
    every node, no gradient); ``soft_grad_fn(params_NP, x_B, targets_NBC) -> (loss_N, grads_NP)``."""
    from peerlearn.rng import step_generator

    def init(params_NP):
        return DistillState(optimizer.init(params_NP), 0)

    def step(state, params_NP, batches, grad_fn, comm):
        round_ = state.round + 1
        trained, opt_state, loss = local_steps(params_NP, state.opt_state, optimizer, batches, grad_fn,
                                               num_local_steps)
        pick = torch.randint(len(public_x), (public_batch,), generator=step_generator(seed, round_))
        x_pub = public_x[pick]
        probs = torch.softmax(logits_fn(trained, x_pub), dim=-1)  # [N, B, C]: what each node sends
        n = trained.shape[0]
        targets = comm.mix(probs.reshape(n, -1), message_bytes=probs[0].numel() * 4).reshape(probs.shape)
        distill_loss = torch.zeros(n)
        for _ in range(distill_steps):
            distill_loss, grads = soft_grad_fn(trained, x_pub, targets)
            trained, opt_state = apply_update(optimizer, distill_weight * grads, opt_state, trained)
        metrics = {"loss": float(loss.mean()), "distill_loss": float(distill_loss.mean())}
        return trained, DistillState(opt_state, round_), metrics

    return Algorithm(init, step)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: distillation)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, Capabilities, LocalSteps, Synchronous  # noqa: E402


@ALGORITHMS.register
class DistillationSpec(LocalSteps, Synchronous):
    """Decentralized distillation (Zhmoginov et al., CVPR 2023, single-head form): nodes share only predictions on
    a public unlabeled set and distill from their neighbours' mixed predictions."""

    name: Literal["distillation"] = "distillation"
    public_samples: int = Field(1000, ge=1, le=10_000_000, description="the public unlabeled set: a seeded slice of "
                                                                       "the training inputs (labels unused)")
    public_batch: int = Field(64, ge=1, le=100_000, description="public samples predicted and sent per round")
    distill_steps: int = Field(1, ge=0, le=10_000, description="steps towards the neighbours' predictions per round")
    distill_weight: float = Field(1.0, ge=0.0, le=1e6, description="the distillation gradient's weight")
    why_not: ClassVar = {"attack": "its messages are predictions, not models",
                         "privacy": "noise on its predictions is not modelled"}
    capabilities: ClassVar = Capabilities(engines=frozenset({"simulator"}), personalized=True)

    def build(self, ctx):
        import functools

        import torch.nn.functional as F
        from torch.func import grad_and_value, vmap

        from peerlearn.models.functional import FlatModel, make_logits_fn, predict_logits

        flat = FlatModel(ctx.module)
        logits_one = make_logits_fn(flat)

        def soft_loss(p, x, q):
            return -(q * F.log_softmax(logits_one(p, x), dim=-1)).sum(-1).mean()

        value_and_grad = vmap(grad_and_value(soft_loss), in_dims=(0, None, 0))

        def soft_grad_fn(params_NP, x_B, targets_NBC):
            grads, loss = value_and_grad(params_NP, x_B, targets_NBC)
            return loss, grads

        x_train = ctx.dataset.x_train
        g = torch.Generator().manual_seed(ctx.seed("distillation"))
        public = x_train[torch.randperm(len(x_train), generator=g)[: self.public_samples]]
        return distillation(self.transform(), functools.partial(predict_logits, flat), soft_grad_fn, public,
                            self.num_local_steps, self.distill_steps, self.public_batch, self.distill_weight,
                            ctx.seed("distillation_rounds"))
