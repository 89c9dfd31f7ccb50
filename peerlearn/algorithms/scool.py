"""SCooL: structured cooperative learning, a learned cooperation graph for personalized models.

Every node keeps its own model. Each round every node trains locally, then

1. **evaluates** every node's trained model on a batch of its own data: ``L[i, j]``, the loss of i's model on
   j's data (in a deployment j does this on the models it receives and sends the losses back);
2. **infers the cooperation graph** ``Y`` from ``-L`` under a graphical-model prior (E-step):
   - ``dirac``: ``Y_ij = sigmoid(-L[i, j] / scale)``;
   - ``sbm`` (a stochastic block model with ``blocks`` communities, within-block link probability 0.8 and 0.2
     between): mean-field variational inference alternates ``Y_ij = sigmoid((sum_gh phi_ig phi_jh
     logit(B_gh) - L[i, j]) / scale)`` with the community memberships ``phi`` (``gamma = 1 + phi``), a few
     iterations per round (every node's ``phi`` at once, damped by half: the reference code updates them one
     node at a time);
   each row normalised to one;
3. **cooperates** (M-step): ``x_i <- x_i + sum_j Y_ij (trained_j - x_j)``, the round's *updates* of the nodes
   it cooperates with, weighted by the graph.

So a node learns with whom to cooperate from how well their models fit its data, and the graph follows the
models as they change (the last round's graph is written to the run folder: ``cooperation_graph.csv`` and
``cooperation_graph.png``). After ``fix_graph_round`` each row keeps only its ``keep_fraction`` largest weights
(renormalised): a sparse graph, and the messages only to those nodes. Bytes: every node's update and trained
model go to every node (an all-gather each) until the graph is fixed, then the update to its cooperators.

References:
    Li, Zhou, Tian & Tao, "Structured Cooperative Learning with Graphical Model Priors", ICML 2023 (code:
    ShuangtongLi/SCooL, ``SCooL_SBM.py``, ``SBM.py``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch

from peerlearn.algorithms.local import local_steps
from peerlearn.rng import step_generator
from peerlearn.types import Algorithm, Tensor, Transform


class ScoolState(NamedTuple):
    opt_state: Any
    round: int
    graph_NN: Tensor  # the cooperation graph of the last round (rows sum to one)
    keep_NN: Tensor  # bool: each row's cooperators once the graph is fixed (all True before)


def sbm_graph(scores_NN: Tensor, blocks: int, scale: float, iterations: int, generator: torch.Generator,
              within: float = 0.8) -> Tensor:
    """The cooperation graph under a stochastic-block-model prior, by mean-field variational inference from a
    random start (module doc); ``scores_NN = -L``. Rows normalised, diagonal included."""
    n = scores_NN.shape[0]
    B = torch.full((blocks, blocks), 1.0 - within, dtype=torch.float64).fill_diagonal_(within)
    log_b, log_nb = B.log(), (1.0 - B).log()
    gamma = torch.ones(n, blocks, dtype=torch.float64) * (2.0 / blocks)
    phi = _dirichlet(gamma, generator)
    y = scores_NN.double()
    for _ in range(iterations):
        block_term = phi @ (log_b - log_nb) @ phi.T  # sum_gh phi_ig phi_jh logit(B_gh)
        W = torch.sigmoid((block_term + y) / scale)
        off = 1.0 - torch.eye(n, dtype=torch.float64)
        Wo = W * off
        # phi_ik  ~ exp( sum_j sum_h phi_jh [W_ij log B_kh + W_ji log B_hk + (1-W_ij) log(1-B_kh) + (1-W_ji) log(1-B_hk)]
        #                + digamma(gamma_ik) - digamma(sum gamma_i) )
        logits = (Wo @ phi @ log_b.T + Wo.T @ phi @ log_b + (off - Wo) @ phi @ log_nb.T + (off - Wo).T @ phi @ log_nb)
        logits = logits + torch.digamma(gamma) - torch.digamma(gamma.sum(1, keepdim=True))
        phi = 0.5 * (phi + torch.softmax(logits, dim=1))  # damped: all nodes update at once, which alone oscillates
        gamma = 1.0 + phi
    W = torch.sigmoid((phi @ (log_b - log_nb) @ phi.T + y) / scale)
    return W / W.sum(1, keepdim=True)


def _dirichlet(concentration: Tensor, generator: torch.Generator) -> Tensor:
    """Dirichlet draws from a seeded generator (normalised gamma draws)."""
    g = _gamma(concentration, generator)
    return g / g.sum(1, keepdim=True)


def _gamma(shape: Tensor, generator: torch.Generator) -> Tensor:
    """Gamma(shape, 1) draws by Marsaglia-Tsang (shape < 1 boosted by U^(1/shape)), from ``generator``."""
    boost = shape < 1.0
    a = torch.where(boost, shape + 1.0, shape)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    while bool(todo.any()):
        z = torch.randn(a.shape, generator=generator, dtype=a.dtype)
        u = torch.rand(a.shape, generator=generator, dtype=a.dtype)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-300)) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        take = todo & ok
        out = torch.where(take, d * v, out)
        todo = todo & ~ok
    u = torch.rand(a.shape, generator=generator, dtype=a.dtype)
    return torch.where(boost, out * u.pow(1.0 / shape), out)


def scool(optimizer: Transform, probe_loss: Callable, num_local_steps: int = 1, prior: str = "sbm",
          blocks: int = 2, scale: float = 0.3, iterations: int = 2, fix_graph_round: int | None = None,
          keep_fraction: float = 0.25, seed: int = 0) -> Algorithm:
    """SCooL (module doc). ``probe_loss(params_RMP, x_RB, y_RB) -> loss_RM``: each row's loss at M models."""

    def init(params_NP):
        n = params_NP.shape[0]
        return ScoolState(optimizer.init(params_NP), 0, torch.full((n, n), 1.0 / n, dtype=torch.float64),
                          torch.ones(n, n, dtype=torch.bool))

    def step(state, params_NP, batches, grad_fn, comm):
        round_ = state.round + 1
        n = params_NP.shape[0]
        trained, opt_state, loss = local_steps(params_NP, state.opt_state, optimizer, batches, grad_fn,
                                               num_local_steps)
        update = trained - params_NP
        keep = state.keep_NN
        fixed = fix_graph_round is not None and round_ > fix_graph_round
        if fixed:  # a sparse graph: each node sends its update to those who keep it
            comm.bytes_sent_N += (keep.sum(0) - 1).double() * comm.message_bytes(update[0])  # not to itself
            graph = state.graph_NN
        else:
            comm.all_gather(trained)  # every model to every node, for the cross-evaluation
            comm.all_gather(update)
            x_B, y_B = batches.next()  # a batch of each node's data: row j evaluates every model on it
            L_NN = probe_loss(trained.unsqueeze(0).expand(n, n, -1), x_B, y_B).T  # [i, j]: i's model, j's data
            if prior == "sbm":
                graph = sbm_graph(-L_NN, blocks, scale, iterations, step_generator(seed, round_))
            else:
                W = torch.sigmoid(-L_NN.double() / scale)
                graph = W / W.sum(1, keepdim=True)
            if fix_graph_round is not None and round_ == fix_graph_round:
                k = max(1, int(math.ceil(keep_fraction * n)))
                keep = torch.zeros(n, n, dtype=torch.bool).scatter_(1, graph.topk(k, dim=1).indices, True)
                keep.fill_diagonal_(True)
                graph = graph * keep
                graph = graph / graph.sum(1, keepdim=True)
        mixed = params_NP + (graph.to(update.dtype) @ update)
        within = float(graph.diagonal().mean())
        return mixed, ScoolState(opt_state, round_, graph, keep), {"loss": float(loss.mean()), "self_weight": within}

    def artifacts(state):
        return {"cooperation_graph": state.graph_NN}

    return Algorithm(init, step, artifacts=artifacts)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: scool)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, Capabilities, LocalSteps, Synchronous  # noqa: E402


@ALGORITHMS.register
class ScoolSpec(LocalSteps, Synchronous):
    """SCooL (Li et al., ICML 2023): personalized models cooperating over a cooperation graph inferred each round
    from how well the nodes' models fit each other's data, under a Dirac or stochastic-block-model prior."""

    name: Literal["scool"] = "scool"
    prior: Literal["sbm", "dirac"] = Field("sbm", description="the cooperation graph's prior: a stochastic block "
                                                              "model (blocks) or none (dirac)")
    blocks: int = Field(2, ge=1, le=1000, description="sbm: communities of the block model")
    scale: float = Field(0.3, gt=0.0, le=1e6, description="temperature of the cooperation weights "
                                                          "sigmoid((block term - loss) / scale)")
    iterations: int = Field(2, ge=1, le=1000, description="sbm: variational iterations per round")
    fix_graph_round: int | None = Field(None, ge=1, description="after this round keep each node's keep_fraction "
                                                                "largest cooperation weights (a sparse, fixed graph)")
    keep_fraction: float = Field(0.25, gt=0.0, le=1.0, description="the share of nodes each node keeps cooperating "
                                                                   "with once the graph is fixed")
    why_not: ClassVar = {"attack": "its messages are updates sent to every node, not gossip",
                         "privacy": "noise on its updates is not modelled"}
    capabilities: ClassVar = Capabilities(engines=frozenset({"simulator"}), personalized=True)

    def build(self, ctx):
        return scool(self.transform(), ctx.probe_loss_fn, self.num_local_steps, self.prior, self.blocks, self.scale,
                     self.iterations, self.fix_graph_round, self.keep_fraction, ctx.seed("scool"))
