"""One global average after the last round, as a wrapper of any synchronous algorithm (``final_merge: true``).

After the wrapped algorithm's last round every node that is up takes the average of the models of the
nodes that are up (one all-reduce), so the run ends with one model: the low-communication D-SGD of the
paper, with communication scheduled late and a single merge at the end, reaches the accuracy of
server-based training. The wrapper sits beside the server rounds of
:mod:`peerlearn.algorithms.semi_decentralized` and runs unchanged on every engine, since it communicates
only through ``comm``.

References:
    Zhu et al., "A Single Merging Suffices: Recovering Server-based Learning Performance in
    Decentralized Learning", 2025 (arXiv:2507.06542).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from peerlearn.types import Algorithm


class MergeState(NamedTuple):
    inner: Any
    round: int


def with_final_merge(algorithm: Algorithm, num_rounds: int) -> Algorithm:
    """``algorithm``, whose round ``num_rounds`` ends with every node holding the mean of the live nodes' models.

    A node that is down in that round keeps its model: the engine restores the rows of down nodes after
    every step, this one included."""
    return after_last_round(algorithm, num_rounds,
                            lambda params_NP, batches, grad_fn, comm:
                            comm.all_reduce_mean(params_NP).expand_as(params_NP).clone())


def with_final_finetune(algorithm: Algorithm, num_rounds: int, optimizer, steps: int) -> Algorithm:
    """``algorithm``, whose round ``num_rounds`` ends with every node taking ``steps`` steps of ``optimizer``
    (a fresh state) on its own data: the personalization baseline of the papers that learn personalized models,
    a shared model fine-tuned locally. No communication.

    References:
        Wang et al., "Federated Evaluation of On-device Personalization", 2019 (local fine-tuning of the
        federated model); Li, Zhou, Tian & Tao, ICML 2023 (SCooL compares against it).
    """
    from peerlearn.algorithms.local import local_steps

    def finetune(params_NP, batches, grad_fn, comm):
        return local_steps(params_NP, optimizer.init(params_NP), optimizer, batches, grad_fn, steps)[0]

    return after_last_round(algorithm, num_rounds, finetune)


def after_last_round(algorithm: Algorithm, num_rounds: int, finish) -> Algorithm:
    """``algorithm`` whose round ``num_rounds`` ends with ``finish(params_NP, batches, grad_fn, comm) -> params_NP``
    (a final merge, a local fine-tuning); its state counts the rounds around the inner one (``MergeState``)."""

    def init(params_NP):
        return MergeState(algorithm.init(params_NP), 0)

    def step(state, params_NP, batches, grad_fn, comm):
        params_NP, inner, metrics = algorithm.step(state.inner, params_NP, batches, grad_fn, comm)
        round_ = state.round + 1
        if round_ == num_rounds:
            params_NP = finish(params_NP, batches, grad_fn, comm)
        return params_NP, MergeState(inner, round_), metrics

    return Algorithm(init, step, *inner_hooks(algorithm))


def inner_hooks(algorithm: Algorithm) -> tuple:
    """``(report, artifacts)`` of a wrapped algorithm, read through the wrapper's ``state.inner``."""
    return tuple(None if hook is None else (lambda state, hook=hook: hook(state.inner))
                 for hook in (algorithm.report, algorithm.artifacts))
