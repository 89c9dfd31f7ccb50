"""Local training shared by every algorithm: ``num_steps`` optimizer steps on each node's own data."""

from __future__ import annotations

import torch

from peerlearn.optim import apply_update
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
    for step in range(num_steps):
        batch = batches.next(rows)
        if params_RP.shape[0] == 0:  # a rank holding none of ``rows``: the sampler's streams still advance
            continue
        loss_R, grads_RP = grad_fn(params_RP, batch)
        if sam_rho:
            ascent = grads_RP * (sam_rho / grads_RP.norm(dim=1, keepdim=True).clamp_min(1e-12))
            _, grads_RP = grad_fn(params_RP + ascent, batch)
        # the first step writes a new tensor (the caller's rows stay untouched), later ones write in place:
        # one pass over the parameters per step, no clone and no update tensor
        params_RP, opt_state = apply_update(optimizer, grads_RP, opt_state, params_RP,
                                            None if step == 0 else params_RP)
        loss_sum += loss_R.detach().double()
    if num_steps == 0:
        params_RP = params_RP.clone()
    return params_RP, opt_state, loss_sum / num_steps
