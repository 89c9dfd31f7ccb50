"""Protocols and aliases shared by every part of peerlearn.

Shape legend used across the package: N nodes, R selected rows (a subset of nodes),
P flat parameters, K neighbours (padded), B batch size.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

import torch

Tensor = torch.Tensor
Batch = tuple[Tensor, Tensor]  # (inputs_RB..., labels_RB)
Metrics = dict[str, float]


class Transform(NamedTuple):
    """A stateful update rule over stacked parameters (optax style).

    ``init(params_NP) -> state``; ``update(grads_NP, state, params_NP) -> (updates_NP, state)``.
    The new parameters are ``params_NP + updates_NP``. Optionally ``apply(grads_NP, state, params_NP, out_NP)
    -> state`` writes the new parameters into ``out_NP`` (which may be ``params_NP`` itself) in one pass,
    without materialising the update (what :func:`peerlearn.optim.apply_update` calls when it exists).
    """

    init: Callable[[Tensor], Any]
    update: Callable[[Tensor, Any, Tensor], tuple[Tensor, Any]]
    apply: Callable[[Tensor, Any, Tensor, Tensor], Any] | None = None


class GradFn(Protocol):
    """Batched loss and gradient: ``(params_RP, batch) -> (loss_R, grads_RP)``."""

    def __call__(self, params_RP: Tensor, batch: Batch) -> tuple[Tensor, Tensor]: ...


class BatchStream(Protocol):
    """Per-node mini-batches: ``next(rows)`` returns the next batch of nodes ``rows`` (all if None)."""

    def next(self, rows: Tensor | None = None) -> Batch: ...


class Comm(Protocol):
    """How messages travel. The simulator and the distributed engine each implement it.

    Every method counts the bytes it sends, per sender, from what is actually sent. An algorithm holds
    ``num_nodes`` rows: every node in the simulator, a rank's own nodes on the distributed engine, whose
    global ids are ``node_ids`` (None: all ``num_global`` nodes, in order). What is drawn for every node
    (noise, samples) is drawn for all ``num_global`` and indexed by ``node_ids``, so a rank's rows get the
    simulator's numbers.
    """

    num_nodes: int
    num_global: int
    node_ids: Tensor | None

    def mix(self, x_NP: Tensor) -> Tensor: ...

    def gather(self, x_NP: Tensor, include_self: bool = True) -> tuple[Tensor, Tensor]: ...

    def all_reduce_mean(self, x_NP: Tensor, weights_N: Tensor | None = None,
                        message_bytes: int | Tensor | None = None) -> Tensor: ...

    def all_gather(self, x_NP: Tensor, message_bytes: int | Tensor | None = None) -> tuple[Tensor, Tensor]: ...

    def server_average(self, x_NP: Tensor, rows: Tensor, weights_R: Tensor | None = None) -> Tensor: ...


class Algorithm(NamedTuple):
    """A decentralized learning algorithm as two functions.

    ``init(params_NP) -> state``;
    ``step(state, params_NP, batches, grad_fn, comm) -> (params_NP, state, metrics)``;
    ``report(state) -> metrics`` (optional): metrics too costly for every round (e.g. the privacy spent),
    computed by the engine at evaluation rows only; on the distributed engine each rank reports over its
    own nodes and the row holds, for a key ending in ``_mean`` (a mean over nodes), the node-weighted mean of
    the ranks' values, for any other key the largest (a worst case over nodes, or the same on all).
    ``artifacts(state) -> {name: tensor}`` (optional): what the algorithm learned beside the models (e.g. a
    cooperation graph), handed to the run folder at the end of the run (``<name>.csv`` and a heat map).
    """

    init: Callable[[Tensor], Any]
    step: Callable[[Any, Tensor, BatchStream, GradFn, Comm], tuple[Tensor, Any, Metrics]]
    report: Callable[[Any], Metrics] | None = None
    artifacts: Callable[[Any], dict[str, Tensor]] | None = None


class AsyncAlgorithm(NamedTuple):
    """An asynchronous algorithm, run by the event engine (:mod:`peerlearn.engines.async_engine`).

    ``init(params_NP) -> state``;
    ``wake(state, params_NP, wakers, batches, grad_fn, net) -> (params_NP, state, metrics)``: the nodes
    ``wakers`` (a shuffled index array) fired their timers in the same time slice and act together;
    ``net`` (:class:`~peerlearn.engines.async_net.AsyncNet`) picks peers, delivers and counts messages.
    ``timer``: True when a node fires on a fixed period (gossip learning), False when it fires again
    as soon as its own work (local steps and sends) is done.
    """

    init: Callable[[Tensor], Any]
    wake: Callable[..., tuple[Tensor, Any, Metrics]]
    timer: bool = False
    # receive(state, params_NP, rows, x_RP, age_R, batches, grad_fn) -> (params_NP, state, metrics): rows ``rows``
    # take in the models ``x_RP`` (of ages ``age_R``) that arrived for them: what a swarm's peer does on a message
    # (``--engine p2p``); None for algorithms that do not run on a swarm yet
    receive: Callable[..., tuple[Tensor, Any, Metrics]] | None = None
