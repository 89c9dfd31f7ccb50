"""Local training shared by every algorithm: ``num_steps`` optimizer steps on each node's own data."""

from __future__ import annotations

import torch

from peerlearn.types import BatchStream, GradFn, Tensor, Transform


def local_steps(params_RP: Tensor, opt_state, optimizer: Transform, batches: BatchStream, grad_fn: GradFn,
                num_steps: int, rows: Tensor | None = None, sam_rho: float = 0.0) -> tuple[Tensor, object, Tensor]:
    """Run ``num_steps`` local steps on nodes ``rows`` (all if None); returns the mean loss per row.

    With ``sam_rho > 0`` each step is a sharpness-aware (SAM) step: the gradient is taken at
    ``x + rho g / ||g||`` on the same mini-batch (two gradient evaluations per step).

    References:
        Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization", ICLR 2021;
        Shi et al., "Improving the Model Consistency of Decentralized Federated Learning", ICML 2023 (DFedSAM).
    """
    loss_sum = torch.zeros(params_RP.shape[0], dtype=torch.float64)
    params_RP = params_RP.clone()  # one copy, then in place: the caller's rows stay untouched, and
    for _ in range(num_steps):     # large-P runs avoid a fresh (page-faulting) allocation per step
        batch = batches.next(rows)
        loss_R, grads_RP = grad_fn(params_RP, batch)
        if sam_rho:
            ascent = grads_RP * (sam_rho / grads_RP.norm(dim=1, keepdim=True).clamp_min(1e-12))
            _, grads_RP = grad_fn(params_RP + ascent, batch)
        updates_RP, opt_state = optimizer.update(grads_RP, opt_state, params_RP)
        params_RP.add_(updates_RP)
        loss_sum += loss_R.detach().double()
    return params_RP, opt_state, loss_sum / num_steps
