"""Decentralized distillation: nodes share predictions on a public unlabeled set, never weights.

Each round every node trains on its own data, then predicts a batch of a public unlabeled set (a seeded slice of
the training inputs, the same at every node; their labels are never used), sends its predictions to its
neighbours, and takes ``distill_steps`` steps towards its neighbours' mixed predictions (cross-entropy with the
mixing-weighted average of their softmax outputs as soft targets, weight ``distill_weight``). A node's predictions
already carry what its neighbours taught it, so knowledge reaches nodes several hops away with no model ever
sent: a message is ``batch x classes`` floats. ``acc_local_*`` judges each node on its own task.

With ``heads: K`` > 1 (the paper's multi-headed form) every model gets K-1 auxiliary heads beside its own output
layer: linear layers on the same features (the input of the model's last ``nn.Linear``). The main head trains on
the node's labels and distils from its neighbours' main heads, as in the single-head form; auxiliary head k distils
from its neighbours' head k-1. Head k thus learns what lies k+1 hops away without the nearer teachers averaging
it out, and its gradient shapes the shared features the main head uses. A message is the predictions of heads
0..K-2. ``teacher: confident`` (the default with auxiliary heads) takes, for every public sample and head, the one
neighbour whose prediction is the most confident (largest top probability) instead of the mixing-weighted
average, so a teacher that knows a sample's class is not outvoted by those that do not. The auxiliary heads live in the
algorithm's state; rows gain ``head<k>_acc_mean`` (each auxiliary head's test accuracy, mean over nodes) and
``heads_acc_mean`` (all heads' probabilities averaged). The paper's text was not retrieved in full: the head chain
(k from k-1) and the most-confident teacher follow its abstract and our recollection (``ALGORITHMS.md`` §2.11);
``teacher: mixed`` is the plain alternative.

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


class MultiHeadState(NamedTuple):
    opt_state: Any
    round: int
    heads_NA: Tensor  # every node's K-1 auxiliary heads, flat: [N, (K-1) * (C * D + C)]
    heads_opt: Any
    params_NP: Tensor  # the models after the last round (what the heads are evaluated with)


def pick_teachers(comm, probs_NHBC: Tensor, teacher: str) -> Tensor:
    """Every node's soft targets ``[N, H, B, C]`` from its neighbours' predictions ``probs_NHBC`` (which it
    sends): their mixing-weighted average (``mixed``), or per head and sample the most confident neighbour's
    (``confident``; a node without neighbours keeps its own)."""
    n = probs_NHBC.shape[0]
    flat = probs_NHBC.reshape(n, -1)
    size = probs_NHBC[0].numel() * 4
    if teacher == "mixed":
        return comm.mix(flat, message_bytes=size).reshape(probs_NHBC.shape)
    received, valid = comm.gather(flat, include_self=False, message_bytes=size)  # [N, K, H*B*C], [N, K]
    received = received.reshape(n, -1, *probs_NHBC.shape[1:])  # [N, K, H, B, C]
    confidence = received.amax(-1).masked_fill(~valid[:, :, None, None], -1.0)  # [N, K, H, B]
    best = confidence.argmax(1)  # [N, H, B]
    picked = torch.take_along_dim(received, best[:, None, :, :, None], dim=1)[:, 0]
    alone = ~valid.any(1)
    picked[alone] = probs_NHBC[alone]
    return picked


def multi_head_distillation(optimizer: Transform, predict_fn: Callable, soft_grad_fn: Callable, evaluate: Callable,
                            heads_init: Tensor, public_x: Tensor, num_local_steps: int = 1, distill_steps: int = 1,
                            public_batch: int = 64, distill_weight: float = 1.0, teacher: str = "confident",
                            num_aux_heads: int = 1, seed: int = 0) -> Algorithm:
    """The multi-headed form (module doc). ``predict_fn(params_NP, heads_NA, x_B) -> probs_NKBC`` of all K heads
    (no gradient); ``soft_grad_fn(params_NP, heads_NA, x_B, targets_NKBC) -> (loss_N, grads_NP, grads_NA)``;
    ``evaluate(params_NP, heads_NA) -> metrics``; ``heads_init``: one node's auxiliary heads ``[A]``."""
    from peerlearn.rng import step_generator

    num_heads = num_aux_heads + 1

    def init(params_NP):
        heads = heads_init[None].expand(params_NP.shape[0], -1).clone()
        return MultiHeadState(optimizer.init(params_NP), 0, heads, optimizer.init(heads), params_NP)

    def step(state, params_NP, batches, grad_fn, comm):
        round_ = state.round + 1
        trained, opt_state, loss = local_steps(params_NP, state.opt_state, optimizer, batches, grad_fn,
                                               num_local_steps)
        heads, heads_opt = state.heads_NA, state.heads_opt
        pick = torch.randint(len(public_x), (public_batch,), generator=step_generator(seed, round_))
        x_pub = public_x[pick]
        probs = predict_fn(trained, heads, x_pub)  # [N, K, B, C]
        sent = probs[:, : max(1, probs.shape[1] - 1)]  # heads 0..K-2: the last head teaches nobody
        got = pick_teachers(comm, sent, teacher)
        targets = torch.cat([got[:, :1], got], 1)[:, :num_heads]  # main and head 1 learn from head 0, k from k-1
        distill_loss = torch.zeros(trained.shape[0])
        for _ in range(distill_steps):
            distill_loss, grads, head_grads = soft_grad_fn(trained, heads, x_pub, targets)
            trained, opt_state = apply_update(optimizer, distill_weight * grads, opt_state, trained)
            heads, heads_opt = apply_update(optimizer, distill_weight * head_grads, heads_opt, heads)
        metrics = {"loss": float(loss.mean()), "distill_loss": float(distill_loss.mean())}
        return trained, MultiHeadState(opt_state, round_, heads, heads_opt, trained), metrics

    def report(state):
        return evaluate(state.params_NP, state.heads_NA)

    return Algorithm(init, step, report)


def head_layout(module: torch.nn.Module, sample_x: Tensor) -> torch.nn.Linear:
    """The model's output layer: its last ``nn.Linear``, whose output must be the model's output (the auxiliary
    heads are copies of it on the same features). Raises ValueError otherwise."""
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no nn.Linear output layer")
    seen = []
    hook = linears[-1].register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            out = module(sample_x)
    finally:
        hook.remove()
    if not seen or seen[-1] is not out or out.dim() != 2:
        raise ValueError(f"{type(module).__name__}'s output is not its last nn.Linear's [batch, classes] output")
    return linears[-1]


def make_head_fns(flat, last: torch.nn.Linear, num_aux: int):
    """``(features_logits, aux_logits)`` for one node: the model's features (the output layer's input) and main
    logits, and the auxiliary heads' logits ``[num_aux, B, C]`` from one flat head row."""
    from torch.func import functional_call

    c, d = last.out_features, last.in_features

    def features_logits(p, x):
        box = []
        hook = last.register_forward_pre_hook(lambda m, inputs: box.append(inputs[0]))
        try:
            out = functional_call(flat.module, flat.unravel(p), (x,))
        finally:
            hook.remove()
        return box[0], out

    def aux_logits(a, feats_BD):
        rows = a.view(num_aux, c * d + c)
        w, b = rows[:, : c * d].view(num_aux, c, d), rows[:, c * d:]
        return torch.einsum("bd,kcd->kbc", feats_BD, w) + b[:, None, :]

    return features_logits, aux_logits


def init_heads(last: torch.nn.Linear, num_aux: int, seed: int) -> Tensor:
    """One node's auxiliary heads, each initialised like the output layer (its own ``reset_parameters``)."""
    import copy

    rows = [torch.zeros(0)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(num_aux):
            head = copy.deepcopy(last)
            head.reset_parameters()
            rows.append(torch.cat([head.weight.detach().reshape(-1), head.bias.detach().reshape(-1)]))
    return torch.cat(rows).float()


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: distillation)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, GOSSIP, Capabilities, LocalSteps, Synchronous  # noqa: E402


@ALGORITHMS.register
class DistillationSpec(LocalSteps, Synchronous):
    """Decentralized (multi-headed) distillation (Zhmoginov et al., CVPR 2023): nodes share only predictions on
    a public unlabeled set and distill from their neighbours' predictions, with auxiliary heads carrying what lies
    further away (``heads``)."""

    name: Literal["distillation"] = "distillation"
    public_samples: int = Field(1000, ge=1, le=10_000_000, description="the public unlabeled set: a seeded slice of "
                                                                       "the training inputs (labels unused)")
    public_batch: int = Field(64, ge=1, le=100_000, description="public samples predicted and sent per round")
    distill_steps: int = Field(1, ge=0, le=10_000, description="steps towards the neighbours' predictions per round")
    distill_weight: float = Field(1.0, ge=0.0, le=1e6, description="the distillation gradient's weight")
    heads: int = Field(1, ge=1, le=64, description="heads per model: 1 is the single-head form; K > 1 adds K-1 "
                                                   "auxiliary heads, head k distilling from neighbours' head k-1")
    teacher: Literal["auto", "confident", "mixed"] = Field(
        "auto", description="whose predictions a node distils from: per public sample and head the most confident "
                            "neighbour's (confident) or the mixing-weighted average of all (mixed); auto: confident "
                            "with auxiliary heads, mixed with one head")
    why_not: ClassVar = {"attack": "its messages are predictions, not models",
                         "privacy": "noise on its predictions is not modelled"}
    capabilities: ClassVar = Capabilities(engines=GOSSIP, personalized=True)  # it only mixes and gathers

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
        if self.heads > 1 or self.teacher == "confident":  # the one-head mixed form below is the original code path
            return self._multi_head(ctx, flat, public)
        return distillation(self.transform(), functools.partial(predict_logits, flat), soft_grad_fn, public,
                            self.num_local_steps, self.distill_steps, self.public_batch, self.distill_weight,
                            ctx.seed("distillation_rounds"))

    def message_values(self, num_params: int, num_classes: int) -> int:
        """Its messages are predictions: every sent head's probabilities on a public batch."""
        return max(num_params, max(1, self.heads - 1) * self.public_batch * num_classes)

    def teacher_rule(self) -> str:
        if self.teacher == "auto":
            return "confident" if self.heads > 1 else "mixed"
        return self.teacher

    def _multi_head(self, ctx, flat, public):
        import torch.nn.functional as F
        from torch.func import grad_and_value, vmap

        from peerlearn.spec import config_error

        try:
            last = head_layout(ctx.module, public[:2])
        except ValueError as e:
            raise config_error("algorithm.heads", f"auxiliary heads copy the model's output layer: {e}") from None
        num_aux = self.heads - 1
        features_logits, aux_logits = make_head_fns(flat, last, num_aux)

        def all_logits(p, a, x):  # [K, B, C]: the main head, then the auxiliary ones
            feats, main = features_logits(p, x)
            return torch.cat([main[None], aux_logits(a, feats)])

        def soft_loss(p, a, x, q_KBC):
            return -(q_KBC * F.log_softmax(all_logits(p, a, x), dim=-1)).sum(-1).mean(-1).sum()

        value_and_grad = vmap(grad_and_value(soft_loss, argnums=(0, 1)), in_dims=(0, 0, None, 0))
        batched_logits = vmap(all_logits, in_dims=(0, 0, None))

        def soft_grad_fn(params_NP, heads_NA, x_B, targets_NKBC):
            (grads, head_grads), loss = value_and_grad(params_NP, heads_NA, x_B, targets_NKBC)
            return loss, grads, head_grads

        def predict_fn(params_NP, heads_NA, x_B):
            with torch.no_grad():
                return torch.softmax(batched_logits(params_NP, heads_NA, x_B), dim=-1)

        x_test, y_test = ctx.dataset.x_test, ctx.dataset.y_test

        def evaluate(params_NP, heads_NA):
            hits = torch.zeros(self.heads + 1, dtype=torch.float64)
            for rows in torch.arange(params_NP.shape[0]).split(64):
                probs = predict_fn(params_NP[rows], heads_NA[rows], x_test)  # [R, K, T, C]
                hits[:-1] += (probs.argmax(-1) == y_test).double().mean(-1).sum(0)
                hits[-1] += (probs.mean(1).argmax(-1) == y_test).double().mean(-1).sum()
            acc = (hits / params_NP.shape[0]).tolist()
            return {**{f"head{k}_acc_mean": acc[k] for k in range(1, self.heads)}, "heads_acc_mean": acc[-1]}

        return multi_head_distillation(self.transform(), predict_fn, soft_grad_fn, evaluate,
                                       init_heads(last, num_aux, ctx.seed("distillation_heads")), public,
                                       self.num_local_steps, self.distill_steps, self.public_batch,
                                       self.distill_weight, self.teacher_rule(), num_aux, ctx.seed("distillation_rounds"))
