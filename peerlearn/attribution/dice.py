"""DICE: the data influence cascade, node j's data's first-order effect on every node's test loss.

One round of decentralized SGD moves node j by ``-eta g_j`` (``g_j``: the gradient of j's loss on its own
data at its model) and the gossip step passes that move on: to node k in one hop with weight ``W_kj``, to k2 in
two hops through k1 with ``W_{k2 k1} W_{k1 j}``, the move bent on the way by k1's own next step,
``(I - eta H_{k1})`` (``H``: the Hessian of k1's training loss). The influence of j's round-t data on node k's
test loss is the inner product of the move that arrives at k with k's test-loss gradient:

    I_1(j -> k) = eta W_kj <grad l(x_k^{t+1}; z'), g_j>
    I_r(j -> k) = eta sum over paths j -> k1 -> ... -> k of r hops of (prod W) <grad l(x_k^{t+1}; z'),
                  (I - eta H_{k_{r-1}}) ... (I - eta H_{k1}) g_j>

(written as the *decrease* of k's test loss: positive means j's data helps k). ``hops = 1`` is the paper's
one-hop estimator, ``hops > 1`` its multi-hop one; summed over rounds it is a TracIn-style attribution of the
whole run, and the exact reference it approximates is leave-one-node-out retraining
(:func:`peerlearn.attribution.reference.leave_one_node_out`). Hessian-vector products are exact
(``torch.func.jvp`` of the gradient), one per (node, source) pair and hop; per round a hop costs one HVP per pair
of nodes within that many hops, so ``hops`` of 1-3 on sparse graphs is the intended range.

The paper also runs the cascade with the test gradient of each later round; like its code, this estimator uses
the models at the end of the round for every hop (the first-order term of the cascade).

References:
    Zhu, Li, Wang & He, "DICE: Data Influence Cascade in Decentralized Learning", ICLR 2025
    (code: Raiden-Zhu/ICLR-2025-DICE).
    Pruthi, Liu, Kale & Sundararajan, "Estimating Training Data Influence by Tracing Gradient Descent",
    NeurIPS 2020 (TracIn: summing per-step first-order influences over a run).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import grad, jvp, vmap

from peerlearn.types import Tensor


def row_functions(loss: Callable) -> tuple[Callable, Callable]:
    """``(gradient, hvp)`` of a one-model ``loss(params_P, x_B, y_B)``, batched over rows:
    ``gradient(params_RP, x_RB, y_RB) -> g_RP`` and ``hvp(params_RP, v_RP, x_RB, y_RB) -> (H v)_RP``."""
    g = grad(loss)

    def hvp_one(p, v, x, y):
        return jvp(lambda q: g(q, x, y), (p,), (v,))[1]

    return vmap(g), vmap(hvp_one)


def dice_round(gradient: Callable, hvp: Callable, before_NP: Tensor, after_NP: Tensor, W_NN: Tensor,
               train_batch: tuple[Tensor, Tensor], test_batch: tuple[Tensor, Tensor], lr: float,
               hops: int = 1) -> Tensor:
    """``I_NN[k, j]``: the influence of node j's round data on node k's test loss (positive: lowers it),
    summed over the paths of 1 to ``hops`` hops (module doc).

    Args:
        gradient, hvp: from :func:`row_functions`.
        before_NP: the models at the start of the round (where each node's own gradient is taken).
        after_NP: the models at its end (where the test gradients are taken).
        W_NN: the round's mixing matrix, dense (``W[k, j]``: k's weight on j's model).
        train_batch: ``(x_NB, y_NB)``, each node's own probe batch (its data, poisoned if the node's is).
        test_batch: ``(x_B, y_B)``, one test batch shared by every node.
        lr: the step size eta.
        hops: how many gossip hops the cascade follows.
    """
    n = before_NP.shape[0]
    x_tr, y_tr = train_batch
    x_te, y_te = test_batch
    g_NP = gradient(before_NP, x_tr, y_tr)
    t_NP = gradient(after_NP, x_te.expand(n, *x_te.shape), y_te.expand(n, *y_te.shape))
    k_E, j_E = W_NN.nonzero(as_tuple=True)  # hop 1: the move of j's step that k receives
    v_EP = W_NN[k_E, j_E, None] * g_NP[j_E]
    influence = torch.zeros(n, n, dtype=t_NP.dtype)
    for hop in range(1, hops + 1):
        influence.index_put_((k_E, j_E), lr * (t_NP[k_E] * v_EP).sum(1), accumulate=True)
        if hop == hops:
            break
        bent = v_EP - lr * hvp(before_NP[k_E], v_EP, x_tr[k_E], y_tr[k_E])  # (I - eta H_k) at the relay k
        k_E, j_E, v_EP = _spread(W_NN, k_E, j_E, bent)
    return influence


def _spread(W_NN: Tensor, k_E: Tensor, j_E: Tensor, v_EP: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One more gossip hop of every (relay k, source j) move: ``v[k', j] = sum_k W[k', k] v[k, j]``."""
    n = W_NN.shape[0]
    to_F, via_F = W_NN[:, k_E].nonzero(as_tuple=True)  # edge k -> k' for every pair's relay k (via indexes pairs)
    key_F = to_F * n + j_E[via_F]
    keys, slot_F = torch.unique(key_F, return_inverse=True)
    out = torch.zeros(len(keys), v_EP.shape[1], dtype=v_EP.dtype)
    out.index_add_(0, slot_F, W_NN[to_F, k_E[via_F], None] * v_EP[via_F])
    return keys // n, keys % n, out


def dice_scorer(tools, test_batch: tuple[Tensor, Tensor], hops: int = 1):
    """The run's DICE attribution: ``pair[k, j]``, the summed influence of node j's data on node k's test loss
    over the rounds so far; ``node[j]``, its influence on the nodes' mean test loss (positive: j's data helps)."""
    from peerlearn.attribution.base import Scorer

    gradient, hvp = row_functions(tools.loss)

    def init(num_nodes: int) -> dict:
        return {"influence_NN": torch.zeros(num_nodes, num_nodes, dtype=torch.float64)}

    def update(state: dict, view) -> dict:
        step = dice_round(gradient, hvp, view.before_NP, view.after_NP, view.W_NN, tools.probe(view.round),
                          test_batch, tools.step_size, hops)
        return {"influence_NN": state["influence_NN"] + step.double()}

    def read(state: dict):
        influence = state["influence_NN"]
        return influence.mean(0), influence

    return Scorer(init, update, read)


# ---------------------------------------------------------------------------------------------
# Spec (attribution.score: dice)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.attribution.base import SCORES, ScoreSpec  # noqa: E402


@SCORES.register
class DiceSpec(ScoreSpec):
    """DICE, the data influence cascade (Zhu et al., ICLR 2025): each node's data's first-order influence on every
    node's test loss over 1 to ``hops`` gossip hops, summed over the rounds."""

    name: Literal["dice"] = "dice"
    hops: int = Field(1, ge=1, le=4, description="gossip hops the cascade follows (1: the one-hop estimator)")
    test_samples: int = Field(256, ge=1, le=100_000, description="test samples (a seeded sample) the influence is "
                                                                "measured on")
    max_nodes: ClassVar = 4096  # an N x N influence matrix, one HVP per pair within hops
    needs_tools: ClassVar = True

    def build(self, ctx, tools):
        x, y = ctx.dataset.x_test, ctx.dataset.y_test
        g = torch.Generator().manual_seed(ctx.seed("dice"))
        idx = torch.randperm(len(y), generator=g)[: self.test_samples]
        return dice_scorer(tools, (x[idx], y[idx]), self.hops)
