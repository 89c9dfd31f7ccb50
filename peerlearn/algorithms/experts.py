"""Isolated experts joined by a router: no weight exchange between the data clusters.

The data are split into K clusters (``data.partition: clusters``: node i in cluster ``i mod K``, each cluster
with its own label set). Each cluster trains its own *expert* in isolation: its nodes take local steps and average
their experts within the cluster (an all-reduce among the cluster's nodes, nothing crosses clusters). Beside it
every node trains a *router*, a copy of the same network that learns to tell the clusters apart (its label: the
node's own cluster), gossiped over the whole network with the run's mixing matrix: the only thing that crosses
clusters. At evaluation the routed ensemble predicts ``sum_k p(k | x) p_k(y | x)`` over the experts (``full``),
over the router's top two (``top2``, renormalised), or the top expert's prediction alone (``top1``); rows gain
``ensemble_top1_acc``, ``ensemble_top2_acc``, ``ensemble_full_acc`` and ``router_acc`` (the router's accuracy
at naming the cluster of a test sample's label).

The node models (``params_NP``) are the experts, so ``acc_mean`` is an expert's accuracy on the whole test set,
and ``acc_local_mean`` on its own cluster's task.

References:
    McAllister, Tancik, Song & Kanazawa, "Decentralized Diffusion Models", CVPR 2025 (experts trained in isolation
    on data clusters, a router, sparse top-k routing); Paris (decentralized diffusion experts with a transformer
    router, 2025).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from peerlearn.algorithms.local import local_steps
from peerlearn.optim import apply_update
from peerlearn.types import Algorithm, Tensor, Transform


class ExpertsState(NamedTuple):
    opt_state: Any
    router_NP: Tensor
    router_opt: Any
    experts_NP: Tensor  # the experts after the last round (what the ensemble is evaluated with)


def group_mean(x_NP: Tensor, group_N: Tensor, num_groups: int) -> Tensor:
    """Every node's row replaced by the mean of its group's rows."""
    members_GN = torch.nn.functional.one_hot(group_N, num_groups).T.to(x_NP.dtype)
    means_GP = (members_GN @ x_NP) / members_GN.sum(1, keepdim=True).clamp_min(1.0)
    return means_GP[group_N]


def routed_accuracy(logits_fn: Callable, experts_KP: Tensor, router_P: Tensor, x: Tensor, y: Tensor,
                    cluster_of_label: Tensor) -> dict[str, float]:
    """The routed ensemble's accuracies on ``(x, y)`` (module doc) and the router's at naming the cluster."""
    k = experts_KP.shape[0]
    with torch.no_grad():
        route = torch.softmax(logits_fn(router_P[None], x)[0][:, :k], dim=1)  # [B, K]
        probs = torch.softmax(logits_fn(experts_KP, x), dim=2)  # [K, B, C]
    full = torch.einsum("bk,kbc->bc", route, probs)
    top = route.topk(min(2, k), dim=1)
    two = torch.zeros_like(route).scatter_(1, top.indices, top.values)
    two = torch.einsum("bk,kbc->bc", two / two.sum(1, keepdim=True), probs)
    first = probs[top.indices[:, 0], torch.arange(len(y))]
    acc = lambda p: float((p.argmax(1) == y).double().mean())  # noqa: E731
    return {"ensemble_top1_acc": acc(first), "ensemble_top2_acc": acc(two), "ensemble_full_acc": acc(full),
            "router_acc": float((route.argmax(1) == cluster_of_label[y]).double().mean())}


def experts(optimizer: Transform, num_experts: int, evaluate: Callable[[Tensor, Tensor], dict],
            num_local_steps: int = 1) -> Algorithm:
    """Isolated experts per cluster and a gossiped router (module doc). ``evaluate(experts_KP, router_P)`` gives
    the ensemble's metrics."""

    def init(params_NP):
        return ExpertsState(optimizer.init(params_NP), params_NP.clone(), optimizer.init(params_NP),
                            params_NP.clone())

    def step(state, params_NP, batches, grad_fn, comm):
        n = params_NP.shape[0]
        group = torch.arange(n) % num_experts
        trained, opt_state, loss = local_steps(params_NP, state.opt_state, optimizer, batches, grad_fn,
                                               num_local_steps)
        sizes = torch.bincount(group, minlength=num_experts).double()
        comm.bytes_sent_N += (sizes[group] - 1) * comm.message_bytes(trained[0])  # to the cluster's other nodes
        experts_NP = group_mean(trained, group, num_experts)
        x_B, _ = batches.next()  # the router learns each node's own cluster from its own inputs
        labels = group[:, None].expand(n, x_B.shape[1])
        router_loss, grads = grad_fn(state.router_NP, (x_B, labels))
        router, router_opt = apply_update(optimizer, grads, state.router_opt, state.router_NP)
        router = comm.mix(router)  # the only message that crosses clusters
        metrics = {"loss": float(loss.mean()), "router_loss": float(router_loss.mean())}
        return experts_NP, ExpertsState(opt_state, router, router_opt, experts_NP), metrics

    def report(state):
        k_rows = torch.stack([state.experts_NP[torch.arange(state.experts_NP.shape[0]) % num_experts == k][0]
                              for k in range(num_experts)])
        return evaluate(k_rows, state.router_NP.mean(0))

    return Algorithm(init, step, report)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: experts)
# ---------------------------------------------------------------------------------------------
import functools  # noqa: E402
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, Capabilities, LocalSteps, Synchronous, config_error  # noqa: E402


@ALGORITHMS.register
class ExpertsSpec(LocalSteps, Synchronous):
    """Isolated experts per data cluster and a gossiped router, evaluated as a routed ensemble (Decentralized
    Diffusion Models, McAllister et al., CVPR 2025)."""

    name: Literal["experts"] = "experts"
    num_experts: int = Field(2, ge=1, le=10_000, description="experts: one per data cluster (data.partition: "
                                                             "clusters with the same num_clusters)")
    why_not: ClassVar = {"attack": "its messages are cluster all-reduces and router gossip",
                         "privacy": "noise on its messages is not modelled"}
    capabilities: ClassVar = Capabilities(engines=frozenset({"simulator"}), personalized=True)

    def check(self, cfg) -> None:
        super().check(cfg)
        p = cfg.data.partition
        if p.name != "clusters" or p.num_clusters != self.num_experts:
            raise config_error("algorithm.num_experts", f"one expert per data cluster: needs data.partition: clusters "
                                                        f"with num_clusters: {self.num_experts}, got {p.name}")
        if self.num_experts > cfg.num_nodes:
            raise config_error("algorithm.num_experts", f"at most num_nodes={cfg.num_nodes} experts")

    def build(self, ctx):
        from peerlearn.data.partition import cluster_label_sets
        from peerlearn.models.functional import FlatModel, predict_logits

        flat = FlatModel(ctx.module)
        logits = functools.partial(predict_logits, flat)
        labels = ctx.dataset.y_train.cpu().numpy()
        sets = cluster_label_sets(labels, self.num_experts, ctx.seed("partition"))
        cluster_of_label = torch.zeros(ctx.dataset.num_classes, dtype=torch.int64)
        for k, label_set in enumerate(sets):
            cluster_of_label[torch.as_tensor(label_set, dtype=torch.int64)] = k
        x_test, y_test = ctx.dataset.x_test, ctx.dataset.y_test

        def evaluate(experts_KP, router_P):
            return routed_accuracy(logits, experts_KP, router_P, x_test, y_test, cluster_of_label)

        return experts(self.transform(), self.num_experts, evaluate, self.num_local_steps)
