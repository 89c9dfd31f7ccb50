"""Asynchronous local SGD: workers push pseudo-gradients whenever their local steps are done.

A server holds the global model ``theta``. Worker ``i`` pulls ``theta``, runs H local steps
(its inner optimizer state persists), and pushes ``Delta_i = theta_pulled - theta_i^H``; the
server applies it at once and the worker pulls the new ``theta``. Fast workers push more often,
so updates arrive *stale*: ``tau_i`` is the number of other workers' pushes applied since worker
``i`` pulled (pushes that land in the same time slice are simultaneous and do not count).

Outer step, Delayed Nesterov (DN): each push applies ``theta <- theta - lr * s(tau) Delta / N``
and accumulates ``s(tau) Delta``; once N pushes have accumulated, the momentum
``m <- beta m + mean(accumulated)`` is updated and ``theta <- theta - lr * beta * m`` applied, so N
pushes equal one outer Nesterov step. ``s(tau) = (1 + tau)^(-staleness_power)`` down-weights stale
updates (0: no weighting). With all workers at equal speed every slice holds all N pushes with
``tau = 0`` and this is exactly synchronous DiLoCo (outer lr 1 and no momentum: local SGD).

The node models the engine evaluates are the workers' copies of ``theta`` as last pulled. On a swarm
(``--engine p2p``) there is no server: every peer holds a replica of ``theta`` and applies every push
(``net.server_pushes``; :mod:`peerlearn.engines.p2p.async_net`).

References:
    Liu, Chhaparia, Douillard, Kale, Rusu, Shen, Szlam & Ranzato, "Asynchronous Local-SGD Training
    for Language Modeling", 2024 (Delayed Nesterov);
    Xie, Koyejo & Gupta, "Asynchronous Federated Optimization", 2019 (polynomial staleness weights).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from peerlearn.algorithms.local import local_steps
from peerlearn.device import from_host
from peerlearn.rows import put_rows, take_rows
from peerlearn.types import AsyncAlgorithm, Tensor, Transform


class AsyncLocalSgdState(NamedTuple):
    theta_P: Tensor  # the server's model
    momentum_P: Tensor  # the outer momentum (DN)
    accumulated_P: Tensor  # weighted pseudo-gradients since the last momentum step
    pushes: int  # pushes accumulated since the last momentum step
    version: int  # pushes applied so far
    pulled_N: Tensor  # version each worker pulled at (int64)
    opt_state: Any  # inner optimizer state, per worker


def async_local_sgd(inner: Transform, num_local_steps: int = 1, outer_lr: float = 1.0, outer_momentum: float = 0.0,
                    staleness_power: float = 0.0) -> AsyncAlgorithm:
    """Asynchronous local SGD with Delayed Nesterov outer steps and optional staleness weights."""

    def init(params_NP):
        theta = params_NP[0].clone()
        zeros = torch.zeros_like(theta)
        return AsyncLocalSgdState(theta, zeros, zeros.clone(), 0, 0,
                                  torch.zeros(params_NP.shape[0], dtype=torch.int64), inner.init(params_NP))

    def wake(state, params_NP, wakers, batches, grad_fn, net):
        n = net.num_nodes  # every worker of the run (on a swarm a peer holds some of them)
        rows = from_host(wakers)
        start = params_NP[rows]
        trained, opt_rows, loss = local_steps(start, take_rows(state.opt_state, rows), inner, batches, grad_fn,
                                              num_local_steps, rows)
        staleness = (state.version - state.pulled_N[rows]).double()
        weight = (1.0 + staleness) ** (-staleness_power) if staleness_power else torch.ones_like(staleness)
        delta = ((start - trained) * weight.to(start.dtype)[:, None]).sum(0)
        net.send(wakers, params_NP.shape[1] * params_NP.element_size())
        delta, pushed = net.server_pushes(delta, len(wakers))  # on a swarm, the other peers' pushes too
        theta = state.theta_P - outer_lr * delta / n
        accumulated, pushes, momentum = state.accumulated_P, state.pushes, state.momentum_P
        if outer_momentum:  # delayed Nesterov: one momentum step per n accumulated pushes
            accumulated, pushes = accumulated + delta, pushes + pushed
            if pushes >= n:
                momentum = outer_momentum * momentum + accumulated / pushes
                theta = theta - outer_lr * outer_momentum * momentum
                accumulated, pushes = torch.zeros_like(accumulated), 0
        version = state.version + pushed
        net.bytes_sent_server += len(wakers) * params_NP.shape[1] * params_NP.element_size()  # the pulls
        params_NP = params_NP.clone()
        params_NP[rows] = theta
        pulled = state.pulled_N.clone()
        pulled[rows] = version
        return params_NP, AsyncLocalSgdState(theta, momentum, accumulated, pushes, version, pulled,
                                             put_rows(state.opt_state, rows, opt_rows)), {
            "loss": float(loss.mean()), "staleness": float(staleness.mean())}

    return AsyncAlgorithm(init, wake)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: async_local_sgd)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, Asynchronous, Capabilities  # noqa: E402


@ALGORITHMS.register
class AsyncLocalSgdSpec(Asynchronous):
    """Asynchronous local SGD with delayed Nesterov outer steps (Liu et al., 2024)."""

    name: Literal["async_local_sgd"] = "async_local_sgd"
    outer_lr: float = Field(0.7, gt=0.0, description="outer learning rate")
    outer_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="outer Nesterov momentum (delayed: one momentum "
                                  "step per num_nodes pushes)")
    staleness_power: float = Field(0.0, ge=0.0, description="weigh a push of staleness tau by (1 + tau)^-power "
                                   "(0: no weighting)")
    capabilities: ClassVar = Capabilities(engines=frozenset({"simulator", "p2p"}), asynchronous=True, global_model=True)
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "its workers push to a trusted parameter server; Byzantine workers are not modelled yet",
        "privacy": "noise on asynchronous pushes is not built yet"}

    def build(self, ctx):
        return async_local_sgd(self.transform(), self.num_local_steps, self.outer_lr, self.outer_momentum,
                               self.staleness_power)
