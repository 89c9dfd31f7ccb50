"""Local-only training: every node trains on its own data and never communicates (the lower baseline)."""

from __future__ import annotations

from typing import Any, NamedTuple

from peerlearn.algorithms.local import local_steps
from peerlearn.types import Algorithm, Transform


class LocalState(NamedTuple):
    opt_state: Any


def local_only(optimizer: Transform, num_local_steps: int = 1) -> Algorithm:
    """No communication at all: equals D-SGD with ``W = I``."""

    def init(params_NP):
        return LocalState(optimizer.init(params_NP))

    def step(state, params_NP, batches, grad_fn, comm):
        params_NP, opt_state, loss = local_steps(params_NP, state.opt_state, optimizer, batches, grad_fn,
                                                 num_local_steps)
        return params_NP, LocalState(opt_state), {"loss": float(loss.mean())}

    return Algorithm(init, step)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: local)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, GOSSIP, Capabilities, LocalSteps, Synchronous  # noqa: E402


@ALGORITHMS.register
class LocalSpec(LocalSteps, Synchronous):
    """Local training only, no communication: the lower baseline."""

    name: Literal["local"] = "local"
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "it sends nothing",
        "privacy": "it sends nothing"}
    capabilities: ClassVar = Capabilities(engines=GOSSIP)

    def build(self, ctx):
        return local_only(self.transform(), self.num_local_steps)
