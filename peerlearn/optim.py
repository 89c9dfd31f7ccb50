"""Optimizers over stacked parameters ``params_NP`` as :class:`~peerlearn.types.Transform` pairs.

Every row is an independent node; each node's optimizer state is the matching row of the
state tensors (every state field has a leading node axis), so selecting rows selects nodes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from peerlearn.types import Tensor, Transform


class SgdState(NamedTuple):
    momentum_NP: Tensor  # empty (0 columns) when momentum == 0


def sgd(lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False) -> Transform:
    """Stochastic gradient descent with optional heavy-ball or Nesterov momentum.

    References:
        Sutskever et al., "On the importance of initialization and momentum in deep learning", ICML 2013.
        The momentum form is PyTorch's: ``b <- mu*b + g``; step ``-lr*b`` (or ``-lr*(g + mu*b)``).
    """

    def init(params_NP: Tensor) -> SgdState:
        cols = params_NP.shape[1] if momentum else 0
        return SgdState(torch.zeros(params_NP.shape[0], cols, dtype=params_NP.dtype))

    def update(grads_NP: Tensor, state: SgdState, params_NP: Tensor) -> tuple[Tensor, SgdState]:
        g = grads_NP + weight_decay * params_NP if weight_decay else grads_NP
        if not momentum:
            return -lr * g, state
        buf = state.momentum_NP.mul(momentum).add_(g)
        step = g + momentum * buf if nesterov else buf
        return -lr * step, SgdState(buf)

    def apply(grads_NP: Tensor, state: SgdState, params_NP: Tensor, out_NP: Tensor) -> SgdState:
        # params - lr g in one pass into out (no update tensor): the steady state of every local step
        if weight_decay or nesterov:
            updates, state = update(grads_NP, state, params_NP)
            torch.add(params_NP, updates, out=out_NP)
            return state
        if momentum:
            state = SgdState(state.momentum_NP.mul(momentum).add_(grads_NP))
            grads_NP = state.momentum_NP
        torch.add(params_NP, grads_NP, alpha=-lr, out=out_NP)
        return state

    return Transform(init, update, apply)


def apply_update(optimizer: Transform, grads_NP: Tensor, state, params_NP: Tensor,
                 out_NP: Tensor | None = None) -> tuple[Tensor, object]:
    """``(params_NP + update, state)``, written into ``out_NP`` (a fresh tensor when None; ``params_NP``
    itself for an in-place step on rows the caller owns), in one pass where the optimizer has ``apply``."""
    out_NP = torch.empty_like(params_NP) if out_NP is None else out_NP
    if optimizer.apply is not None:
        return out_NP, optimizer.apply(grads_NP, state, params_NP, out_NP)
    updates_NP, state = optimizer.update(grads_NP, state, params_NP)
    return torch.add(params_NP, updates_NP, out=out_NP), state



class AdamState(NamedTuple):
    m_NP: Tensor
    v_NP: Tensor
    count_N: Tensor  # steps taken by each node (rows may be stepped separately)


def adamw(lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0) -> Transform:
    """Adam with decoupled weight decay, per node.

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015;
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """

    def init(params_NP: Tensor) -> AdamState:
        zeros = torch.zeros_like(params_NP)
        return AdamState(zeros, zeros.clone(), torch.zeros(params_NP.shape[0], 1, dtype=params_NP.dtype))

    def update(grads_NP: Tensor, state: AdamState, params_NP: Tensor) -> tuple[Tensor, AdamState]:
        m = state.m_NP.mul(beta1).add_(grads_NP, alpha=1 - beta1)
        v = state.v_NP.mul(beta2).addcmul_(grads_NP, grads_NP, value=1 - beta2)
        count = state.count_N + 1
        m_hat = m / (1 - beta1 ** count)
        v_hat = v / (1 - beta2 ** count)
        step = m_hat / (v_hat.sqrt() + eps)
        if weight_decay:
            step = step + weight_decay * params_NP
        return -lr * step, AdamState(m, v, count)

    return Transform(init, update)


class ProximalState(NamedTuple):
    anchor_NP: Tensor
    inner: object


def proximal(inner: Transform, mu: float) -> Transform:
    """Add the FedProx term ``mu (x - x_anchor)`` to every gradient; the anchor is the model at ``init``.

    FedAvg re-initialises its clients' optimizer every round, so the anchor is the global model
    the client started the round from.

    References:
        Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020 (FedProx).
    """

    def init(params_NP: Tensor) -> ProximalState:
        return ProximalState(params_NP.clone(), inner.init(params_NP))

    def update(grads_NP: Tensor, state: ProximalState, params_NP: Tensor) -> tuple[Tensor, ProximalState]:
        g = grads_NP + mu * (params_NP - state.anchor_NP)
        updates, inner_state = inner.update(g, state.inner, params_NP)
        return updates, ProximalState(state.anchor_NP, inner_state)

    def apply(grads_NP: Tensor, state: ProximalState, params_NP: Tensor, out_NP: Tensor) -> ProximalState:
        g = grads_NP + mu * (params_NP - state.anchor_NP)
        _, inner_state = apply_update(inner, g, state.inner, params_NP, out_NP)
        return ProximalState(state.anchor_NP, inner_state)

    return Transform(init, update, apply)


# ---------------------------------------------------------------------------------------------
# Specs (algorithm.optimizer): the local optimizer of an algorithm; the algorithm's lr is passed in
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.spec import Registry, Spec  # noqa: E402


class OptimizerSpec(Spec):
    """A local optimizer: ``build(lr) -> Transform`` over stacked parameters."""

    state_copies: ClassVar[int] = 1  # N x P tensors of optimizer state (for the memory estimate; a plugin: 1)

    def build(self, lr: float) -> Transform:
        raise NotImplementedError


OPTIMIZERS = Registry("optimizer", OptimizerSpec, "algorithm.optimizer", "local (inner) optimizers")


@OPTIMIZERS.register
class SgdSpec(OptimizerSpec):
    """SGD with heavy-ball momentum and L2 weight decay (Polyak, 1964)."""

    name: Literal["sgd"] = "sgd"
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="heavy-ball momentum")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty")

    @property
    def state_copies(self) -> int:  # the momentum buffer, when there is one
        return int(self.momentum > 0)

    def build(self, lr: float) -> Transform:
        return sgd(lr, momentum=self.momentum, weight_decay=self.weight_decay)


@OPTIMIZERS.register
class AdamWSpec(OptimizerSpec):
    """Adam with decoupled weight decay (Loshchilov & Hutter, ICLR 2019)."""

    name: Literal["adamw"] = "adamw"
    state_copies: ClassVar[int] = 2  # first and second moments
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled weight decay")

    def build(self, lr: float) -> Transform:
        return adamw(lr, weight_decay=self.weight_decay)
