"""CHOCO-SGD: decentralized SGD with compressed gossip and public copies.

Every node keeps its model ``x_i``, a public copy ``x_hat_i`` that all its neighbours also hold,
and ``s_i = sum_j W_ij x_hat_j``. A round: local steps ``x_i <- x_i - eta g_i``; send
``q_i = C(x_i - x_hat_i)``; everyone updates ``x_hat_i <- x_hat_i + q_i`` and
``s_i <- s_i + sum_j W_ij q_j``; then ``x_i <- x_i + gamma (s_i - x_hat_i)`` (the consensus step
size ``gamma`` shrinks as compression gets harsher). Only compressed differences travel, and the
bytes counted are the compressor's encoded sizes. With no compression and ``gamma = 1`` this is
D-SGD (adapt-then-combine). The public copies start at the common initial model when every node
starts from it (``known_init``), at zero otherwise, as in the paper.

The running sum ``s`` assumes the same W every round, so CHOCO runs on a static topology without
faults (the config checks this).

References:
    Koloskova, Stich & Jaggi, "Decentralized Stochastic Optimization and Gossip Algorithms with
    Compressed Communication", ICML 2019 (Algorithm 2); Koloskova, Lin, Stich & Jaggi,
    "Decentralized Deep Learning with Arbitrary Communication Compression", ICLR 2020.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from peerlearn.algorithms.local import local_steps
from peerlearn.compressors import Compressor
from peerlearn.types import Algorithm, Tensor, Transform


class ChocoState(NamedTuple):
    public_NP: Tensor  # x_hat
    mixed_NP: Tensor  # s = W x_hat
    opt_state: Any
    compressor_state: Any


def choco(optimizer: Transform, num_local_steps: int, compressor: Compressor, consensus_lr: float,
          known_init: bool = True) -> Algorithm:
    """CHOCO-SGD with ``compressor`` on the differences to the public copies and step size ``consensus_lr``."""
    if not 0.0 < consensus_lr <= 1.0:
        raise ValueError(f"algorithm.consensus_lr must be in (0, 1], got {consensus_lr}")

    def init(params_NP):
        public = params_NP.clone() if known_init else torch.zeros_like(params_NP)
        return ChocoState(public, public.clone(), optimizer.init(params_NP), compressor.init(params_NP))

    def step(state, params_NP, batches, grad_fn, comm):
        trained, opt_state, loss = local_steps(params_NP, state.opt_state, optimizer, batches, grad_fn,
                                               num_local_steps)
        q, nbytes, compressor_state = compressor.update(trained - state.public_NP, state.compressor_state)
        public = state.public_NP + q
        mixed = state.mixed_NP + comm.mix(q, message_bytes=nbytes)
        params_NP = trained + consensus_lr * (mixed - public)
        return params_NP, ChocoState(public, mixed, opt_state, compressor_state), {"loss": float(loss.mean())}

    return Algorithm(init, step)


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: choco)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field, SerializeAsAny  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, GOSSIP, Capabilities, LocalSteps, Synchronous  # noqa: E402
from peerlearn.compressors.base import COMPRESSORS, CompressorSpec  # noqa: E402
from peerlearn.spec import slot  # noqa: E402


@ALGORITHMS.register
class ChocoSpec(LocalSteps, Synchronous):
    """CHOCO-SGD: gossip of compressed differences to public copies (Koloskova et al., ICML 2019)."""

    name: Literal["choco"] = "choco"
    compressor: SerializeAsAny[CompressorSpec] = slot(COMPRESSORS, "none", "how each message is compressed")
    consensus_lr: float = Field(1.0, gt=0.0, le=1.0, description="consensus step size gamma (smaller for harsher "
                                "compression)")
    slots: ClassVar = {"compressor": COMPRESSORS}
    capabilities: ClassVar = Capabilities(engines=GOSSIP, static_topology=True)
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "its messages are compressed differences to public copies; their poisoning is not modelled yet",
        "privacy": "noise on compressed differences is not modelled yet"}

    def build(self, ctx):
        return choco(self.transform(), self.num_local_steps, self.compressor.build(ctx.seed("compressor")),
                     self.consensus_lr, ctx.same_init)
