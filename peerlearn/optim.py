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

    return Transform(init, update)

