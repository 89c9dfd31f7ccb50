"""Flat-parameter view of a module and batched loss/gradient over stacked parameters.

``params_NP`` holds N models as rows; :meth:`FlatModel.unravel` turns a row into named views
for :func:`torch.func.functional_call`. Three gradient strategies compute the same numbers (to float
rounding): ``dense`` (the closed form for dense ReLU networks, :mod:`peerlearn.models.dense`; the
fastest where it applies), ``vmap`` (one batched computation over rows; any module) and ``loop`` (one
autograd call per row), each optionally over chunks of rows to bound memory.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from peerlearn.types import Batch, GradFn, Tensor


class FlatModel:
    """A module template plus the layout of its parameters in one flat vector of length P."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.names = [n for n, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.numels = [math.prod(s) for s in self.shapes]
        self.num_params = sum(self.numels)
        self._activations: dict[tuple, int] = {}

    def ravel(self, module: nn.Module | None = None) -> Tensor:
        """The parameters of ``module`` (default: the template) as one flat float32 vector."""
        m = self.module if module is None else module
        return torch.cat([p.detach().reshape(-1) for p in m.parameters()]).float()

    def activation_numel(self, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int:
        """Elements of all intermediate outputs of one forward pass on one sample (a memory estimate; cached).

        ``dtype`` is the input's: integer inputs (token indices) are fed as zeros of that type.
        """
        key = (tuple(input_shape), dtype)
        if key not in self._activations:
            total = 0

            def count(_module, _inputs, output):
                nonlocal total
                outs = output if isinstance(output, (tuple, list)) else (output,)
                total += sum(o.numel() for o in outs if isinstance(o, torch.Tensor))

            hooks = [m.register_forward_hook(count) for m in self.module.modules() if m is not self.module]
            device = next(self.module.parameters(), torch.empty(0)).device  # a meta-device module counts for free
            try:
                with torch.no_grad():
                    self.module(torch.zeros(1, *input_shape, dtype=dtype, device=device))
            finally:
                for h in hooks:
                    h.remove()
            self._activations[key] = max(total, 1)
        return self._activations[key]

    def layer_slices(self) -> list[slice]:
        """Column range of every parameter tensor with more than one element in ``params_NP``."""
        starts = [0, *itertools.accumulate(self.numels)]
        return [slice(a, a + n) for a, n in zip(starts, self.numels) if n > 1]

    def unravel(self, params_P: Tensor) -> dict[str, Tensor]:
        """Named views into one flat parameter row (no copy)."""
        return {n: t.view(s) for n, t, s in zip(self.names, params_P.split(self.numels), self.shapes)}

    def init_params(self, num_nodes: int, seed: int, same_init: bool = True) -> Tensor:
        """``params_NP``: every node's initial model, from the module's own initialiser, seeded."""
        rows = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(1 if same_init else num_nodes):
                for layer in self.module.modules():
                    if layer is not self.module and hasattr(layer, "reset_parameters"):
                        layer.reset_parameters()
                rows.append(self.ravel())
        params = torch.stack(rows)
        return params.expand(num_nodes, -1).clone() if same_init else params

    def load_into(self, module: nn.Module, params_P: Tensor) -> nn.Module:
        """Copy one flat row into a real module (for export or a per-node loop)."""
        with torch.no_grad():
            for p, v in zip(module.parameters(), self.unravel(params_P).values()):
                p.copy_(v)
        return module


def make_logits_fn(flat: FlatModel):
    """``logits(params_P, x_B) -> logits_B...``: one flat parameter row's forward pass (vmap it over rows)."""

    def logits(params_P: Tensor, x_B: Tensor) -> Tensor:
        return functional_call(flat.module, flat.unravel(params_P), (x_B,))

    return logits


def make_loss_fn(flat: FlatModel):
    """``loss(params_P, x_B, y_B) -> scalar`` mean cross-entropy of one model on one batch (0 for a batch
    labelled -1, the batch of a node that holds no data)."""
    logits = make_logits_fn(flat)

    def loss(params_P: Tensor, x_B: Tensor, y_B: Tensor) -> Tensor:
        ce = F.cross_entropy(logits(params_P, x_B), y_B.clamp(min=0))
        return ce * (y_B[0] >= 0)  # label -1 marks a node without data (a relay): zero loss, zero gradient

    return loss


def make_probe_loss_fn(flat: FlatModel):
    """``loss(params_RMP, x_RB, y_RB) -> loss_RM``: each row's loss at M points on its own batch (forward only;
    zeroth-order methods such as SPSA)."""
    return vmap(vmap(make_loss_fn(flat), in_dims=(0, None, None)))


def make_grad_fn(flat: FlatModel, strategy: str = "vmap", max_rows: int | None = None) -> GradFn:
    """Batched ``(params_RP, (x_RB, y_RB)) -> (loss_R, grads_RP)`` for any number of rows R.

    ``dense``: the closed form of :mod:`peerlearn.models.dense` (dense ReLU networks only); ``vmap``: one
    ``torch.func`` computation over the rows; ``loop``: one autograd call per row. ``max_rows`` computes
    at most that many rows at a time (bounding activation memory; the numbers do not change)."""
    if strategy == "dense":
        from peerlearn.models.dense import dense_layout, make_dense_grad_fn

        layout = dense_layout(flat.module)
        if layout is None:
            raise ValueError("model.grad_strategy: dense computes nn.Sequential stacks of Linear and ReLU layers "
                             f"(logreg, mlp); {type(flat.module).__name__} is not one (use auto, vmap or loop)")
        grad_fn = make_dense_grad_fn(layout)
    elif strategy == "vmap":
        batched = vmap(grad_and_value(make_loss_fn(flat)))

        def grad_fn(params_RP: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
            grads, loss = batched(params_RP, *batch)
            return loss, grads

    elif strategy == "loop":
        per_row = grad_and_value(make_loss_fn(flat))

        def grad_fn(params_RP: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
            x, y = batch
            grads = torch.empty_like(params_RP)
            loss = torch.empty(params_RP.shape[0], dtype=params_RP.dtype)
            for i in range(params_RP.shape[0]):
                grads[i], loss[i] = per_row(params_RP[i], x[i], y[i])
            return loss, grads

    else:
        raise ValueError(f"model.grad_strategy: unknown strategy {strategy!r}; allowed: dense, vmap, loop")
    return grad_fn if max_rows is None else _in_row_chunks(grad_fn, max_rows)


def in_compute_dtype(grad_fn: GradFn, dtype: torch.dtype) -> GradFn:
    """``grad_fn`` computing its forward and backward passes in ``dtype`` (bfloat16: mixed precision,
    Micikevicius et al. 2018): the rows and the inputs are cast on the way in, the loss and the gradients
    come back float32, so the models, the optimizer and everything an algorithm keeps stay float32."""
    if dtype == torch.float32:
        return grad_fn

    def mixed(params_RP: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        x, y = batch
        loss, grads = grad_fn(params_RP.to(dtype), (x.to(dtype) if x.is_floating_point() else x, y))
        return loss.float(), grads.to(params_RP.dtype)

    return mixed


def _in_row_chunks(grad_fn: GradFn, max_rows: int) -> GradFn:
    """``grad_fn`` over at most ``max_rows`` rows at a time, into one preallocated result."""

    def chunked(params_RP: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        num_rows = params_RP.shape[0]
        if num_rows <= max_rows:
            return grad_fn(params_RP, batch)
        grads = torch.empty_like(params_RP)
        loss = torch.empty(num_rows, dtype=params_RP.dtype)
        for a in range(0, num_rows, max_rows):
            part = slice(a, a + max_rows)
            loss[part], grads[part] = grad_fn(params_RP[part], tuple(t[part] for t in batch))
        return loss, grads

    return chunked


def _logit_chunks(flat: FlatModel, params_RP: Tensor, x_T: Tensor, max_elements: int):
    """``(rows, inputs, logits)`` chunk by chunk, rows and inputs split so that one chunk's activations stay
    below ``max_elements`` floats (64 MiB by default): a CNN on 10,000 images never materialises gigabytes."""
    forward = vmap(make_logits_fn(flat), in_dims=(0, None))
    per_sample = flat.activation_numel(tuple(x_T.shape[1:]), x_T.dtype)
    samples = max(1, min(x_T.shape[0], max_elements // per_sample))
    rows = max(1, max_elements // (per_sample * samples))
    for r in range(0, params_RP.shape[0], rows):
        for t in range(0, x_T.shape[0], samples):
            yield slice(r, r + rows), slice(t, t + samples), forward(params_RP[r:r + rows], x_T[t:t + samples])


@torch.no_grad()
def predicted_matches(flat: FlatModel, params_RP: Tensor, x_T: Tensor, labels: list[Tensor],
                      max_elements: int = 2**24) -> list[Tensor]:
    """For each label vector in ``labels``: the fraction of the inputs ``x_T`` on which each row's model
    predicts that label, ``[R]`` float64 (accuracy, or an attack's success).

    Each chunk of logits is reduced to per-row counts at once: no more than one chunk exists at a time,
    whatever R and T (100,000 nodes evaluate in the memory of one chunk).
    """
    counts = [torch.zeros(params_RP.shape[0], dtype=torch.int64) for _ in labels]
    for rows, inputs, logits in _logit_chunks(flat, params_RP, x_T, max_elements):
        predicted = logits.argmax(-1)
        for count, y in zip(counts, labels):
            count[rows] += (predicted == y[inputs]).sum(1)
    return [c.double() / x_T.shape[0] for c in counts]


@torch.no_grad()
def accuracy_and_loss(flat: FlatModel, params_RP: Tensor, x_T: Tensor, y_T: Tensor,
                      max_elements: int = 2**24) -> tuple[Tensor, Tensor]:
    """Each row's accuracy and mean cross-entropy on ``(x_T, y_T)``, both ``[R]`` float64, from one forward pass
    in the chunks of :func:`predicted_matches` (the loss the models train on, summed in float64)."""
    correct = torch.zeros(params_RP.shape[0], dtype=torch.int64)
    loss = torch.zeros(params_RP.shape[0], dtype=torch.float64)
    for rows, inputs, logits in _logit_chunks(flat, params_RP, x_T, max_elements):
        y = y_T[inputs].expand(logits.shape[0], *y_T[inputs].shape)
        correct[rows] += (logits.argmax(-1) == y).flatten(1).sum(1)
        nll = -logits.log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        loss[rows] += nll.double().flatten(1).sum(1)
    per_row = y_T[0].numel()  # a sequence model scores every position of a sample
    return correct.double() / (x_T.shape[0] * per_row), loss / (x_T.shape[0] * per_row)


@torch.no_grad()
def predict_logits(flat: FlatModel, params_RP: Tensor, x_T: Tensor, max_elements: int = 2**24) -> Tensor:
    """Logits ``[R, T, C]`` of every row's model on the same inputs (computed in chunks, then joined)."""
    out = None
    for rows, inputs, logits in _logit_chunks(flat, params_RP, x_T, max_elements):
        if out is None:
            out = logits.new_empty(params_RP.shape[0], x_T.shape[0], *logits.shape[2:])
        out[rows, inputs] = logits
    return out
