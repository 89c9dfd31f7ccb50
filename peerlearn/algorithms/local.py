"""Local training shared by every algorithm: ``num_steps`` optimizer steps on each node's own data."""

from __future__ import annotations

import torch

from peerlearn.types import BatchStream, GradFn, Tensor, Transform


def local_steps(params_RP: Tensor, opt_state, optimizer: Transform, batches: BatchStream, grad_fn: GradFn,
                num_steps: int, rows: Tensor | None = None) -> tuple[Tensor, object, Tensor]:
    """Run ``num_steps`` local steps on nodes ``rows`` (all if None); returns the mean loss per row."""
    loss_sum = torch.zeros(params_RP.shape[0], dtype=torch.float64)
    params_RP = params_RP.clone()  # one copy, then in place: the caller's rows stay untouched, and
    for _ in range(num_steps):     # large-P runs avoid a fresh (page-faulting) allocation per step
        loss_R, grads_RP = grad_fn(params_RP, batches.next(rows))
        updates_RP, opt_state = optimizer.update(grads_RP, opt_state, params_RP)
        params_RP.add_(updates_RP)
        loss_sum += loss_R.detach().double()
    return params_RP, opt_state, loss_sum / num_steps
