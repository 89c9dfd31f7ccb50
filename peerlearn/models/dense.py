"""Closed-form batched gradients of dense ReLU networks (``logreg``, ``mlp`` and any ``nn.Sequential`` of
the same form): every node's forward and backward pass as batched matrix products over the stacked
parameters, written into one preallocated gradient tensor.

For a network ``Flatten -> Linear -> ReLU -> ... -> Linear`` with softmax cross-entropy, node ``r``'s
forward pass is ``z_l = h_{l-1} W_l^T + b_l``, ``h_l = relu(z_l)``, and its backward pass is

    dz_L = (softmax(z_L) - onehot(y)) / B,    dW_l = dz_l^T h_{l-1},    db_l = sum_b dz_l,
    dz_{l-1} = (dz_l W_l) * [h_{l-1} > 0]

(Goodfellow, Bengio & Courville, *Deep Learning*, 2016, section 6.5: back-propagation). Batched over
the R node rows, each product is one ``baddbmm``/``bmm``; nothing is traced or wrapped, which is where
``torch.func.vmap`` spends a third of a small network's round (benchmarks/README.md). The numbers are
those of autograd on the same module to float rounding (tests/models/test_dense.py).

A row whose labels are ``-1`` (a relay node without data) has zero loss and zero gradient, as in
:func:`peerlearn.models.functional.make_loss_fn`.
"""

from __future__ import annotations

import torch
from torch import nn

from peerlearn.types import Batch, GradFn, Tensor


# torch's bmm uses MKL's batched GEMM only for a contiguous output; into the gradient rows (a strided view)
# it loops over the nodes, one GEMM each. For small per-node products (<= 16k weights) the batched GEMM and a
# copy of a block that stays in cache (<= 32 MB) is faster: 182 vs 237 us for 64 nodes of 64x64, 4.6 vs 5.4 ms
# for 1,024; at 4,096 nodes (67 MB) and for logreg's 62x784 the direct write wins (benchmarks/README.md).
_SMALL_ITEM, _SMALL_BLOCK = 16384, 8 * 2 ** 20


def dense_layout(module: nn.Module) -> list[tuple[int, int]] | None:
    """``[(in, out), ...]`` of the Linear layers when ``module`` is a dense ReLU network this path computes
    exactly (``nn.Sequential``: an optional leading ``Flatten``, then ``Linear`` layers with a ``ReLU``
    between consecutive ones, biases on); None for anything else (it then goes through ``vmap``)."""
    if type(module).forward is not nn.Sequential.forward:
        return None
    layers = list(module)
    if layers and isinstance(layers[0], nn.Flatten) and (layers[0].start_dim, layers[0].end_dim) == (1, -1):
        layers = layers[1:]
    if not layers or len(layers) % 2 == 0:
        return None
    shapes = []
    for k, layer in enumerate(layers):
        if k % 2 == 0:
            if type(layer) is not nn.Linear or layer.bias is None:
                return None
            shapes.append((layer.in_features, layer.out_features))
        elif type(layer) is not nn.ReLU:
            return None
    return shapes


def layer_offsets(layout: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(weight start, bias start)`` of each Linear layer in the flat parameters (``named_parameters`` order:
    each layer's weight ``[out, in]``, then its bias)."""
    offsets, start = [], 0
    for fan_in, fan_out in layout:
        offsets.append((start, start + fan_in * fan_out))
        start += fan_in * fan_out + fan_out
    return offsets


def layer_views(params_RP: Tensor, layout: list[tuple[int, int]]) -> list[tuple[Tensor, Tensor]]:
    """Views ``(W [R, out, in], b [R, out])`` of each Linear layer of every row's flat parameters."""
    return [(params_RP[:, w0:b0].view(-1, fan_out, fan_in), params_RP[:, b0:b0 + fan_out])
            for (fan_in, fan_out), (w0, b0) in zip(layout, layer_offsets(layout))]


def make_dense_grad_fn(layout: list[tuple[int, int]]) -> GradFn:
    """Batched ``(params_RP, (x_RB..., y_RB)) -> (loss_R, grads_RP)`` for the dense network ``layout``
    (parameters in :func:`layer_offsets` order)."""
    offsets = layer_offsets(layout)

    def grad_fn(params_RP: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        x, y = batch
        num_rows, size = y.shape
        h = x.reshape(num_rows, size, -1).to(params_RP.dtype)
        weights, inputs = [], []
        for k, ((fan_in, fan_out), (w0, b0)) in enumerate(zip(layout, offsets)):
            w = params_RP[:, w0:b0].view(num_rows, fan_out, fan_in)
            b = params_RP[:, b0:b0 + fan_out].view(num_rows, 1, fan_out)
            weights.append(w)
            inputs.append(h)
            h = torch.baddbmm(b, h, w.transpose(1, 2))
            if k < len(layout) - 1:
                h.clamp_(min=0)
        logits = h
        has_data = y[:, 0] >= 0
        label = y.clamp(min=0).unsqueeze(-1)
        lse = torch.logsumexp(logits, -1, keepdim=True)
        loss_R = (lse - logits.gather(-1, label)).squeeze(-1).mean(1) * has_data
        dz = logits.sub_(lse).exp_()  # softmax, in the logits' storage (not needed after this)
        dz.scatter_add_(-1, label, torch.full_like(label, -1.0, dtype=dz.dtype))
        dz.mul_((has_data.to(dz.dtype) / size).view(num_rows, 1, 1))
        grads = torch.empty_like(params_RP)
        for k in range(len(layout) - 1, -1, -1):
            (fan_in, fan_out), (w0, b0) = layout[k], offsets[k]
            block = grads[:, w0:b0].view(num_rows, fan_out, fan_in)
            if fan_in * fan_out <= _SMALL_ITEM and num_rows * fan_in * fan_out <= _SMALL_BLOCK:
                block.copy_(torch.bmm(dz.transpose(1, 2), inputs[k]))  # one batched GEMM, then a cached copy
            else:
                torch.bmm(dz.transpose(1, 2), inputs[k], out=block)  # straight into the gradient rows
            torch.sum(dz, 1, out=grads[:, b0:b0 + fan_out])
            if k:
                # ReLU's backward in one pass (dh where the layer's output was positive, else 0): 8x a
                # boolean mask and a multiply at 256 nodes x 16 x 64, and the same numbers
                dz = torch.ops.aten.threshold_backward(torch.bmm(dz, weights[k]), inputs[k], 0)
        return loss_R, grads

    return grad_fn
