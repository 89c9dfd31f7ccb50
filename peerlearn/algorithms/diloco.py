"""DiLoCo: H inner optimizer steps, then an outer Nesterov step on the averaged pseudo-gradient.

Each node starts the round from its anchor ``theta_i``, runs H inner steps (AdamW in the
paper), and the trained models are combined: an all-reduce (the paper's setting) or one
gossip step over the round's graph. The pseudo-gradient is ``Delta_i = theta_i - combined_i``
(with an all-reduce, the average of the nodes' ``theta - theta_i^H``), and the outer optimizer
(SGD with Nesterov momentum) updates the anchor: ``theta_i <- OuterOpt(theta_i, Delta_i)``.
Inner optimizer state persists across rounds. Outer lr 1 without momentum is local SGD
(periodic averaging), and with H = 1 and inner SGD it is synchronous data-parallel SGD.

With a ``compressor`` (usually wrapped in error feedback) each node sends its compressed
pseudo-gradient ``C(theta - theta_i^H)`` instead of its model, and the outer step uses the mean
of the decoded messages. Compressed messages cannot be summed on the way as a ring all-reduce does,
so they are all-gathered and counted as such (:meth:`~peerlearn.engines.comm.SimComm.all_reduce_mean`). With
``reduce: ring`` a quantizer rides the ring all-reduce instead, re-encoding every hop's partial sum
(:mod:`peerlearn.compressors.ring`, as INTELLECT-1 does with int8), without error feedback.

References:
    Douillard et al., "DiLoCo: Distributed Low-Communication Training of Language Models", 2023
    (H = 500, outer lr 0.7, Nesterov momentum 0.9);
    Stich, "Local SGD Converges Fast and Communicates Little", ICLR 2019 (local SGD);
    Douillard et al., "Streaming DiLoCo with overlapping communication", 2025, and Peng et al.,
    "DeMo: Decoupled Momentum Optimization", 2024 (compressed outer gradients).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from peerlearn.algorithms.local import local_steps
from peerlearn.compressors import Compressor
from peerlearn.optim import sgd
from peerlearn.types import Algorithm, Transform


class DilocoState(NamedTuple):
    inner_state: Any
    outer_state: Any
    compressor_state: Any = None


def diloco(inner: Transform, num_inner_steps: int = 1, outer_lr: float = 0.7, outer_momentum: float = 0.9,
           nesterov: bool = True, combine: str = "all_reduce", compressor: Compressor | None = None,
           ring: bool = False) -> Algorithm:
    """DiLoCo with ``num_inner_steps`` (H) inner steps per round; ``combine``: ``all_reduce`` or ``gossip``;
    ``compressor``: compress the pseudo-gradients (all-reduce only), all-gathered or, with ``ring``, re-encoded
    hop by hop on a ring all-reduce."""
    if combine not in ("all_reduce", "gossip"):
        raise ValueError(f"algorithm.combine must be 'all_reduce' or 'gossip', got {combine!r}")
    if compressor is not None and combine != "all_reduce":
        raise ValueError("algorithm.compressor: diloco compresses the pseudo-gradients of its all-reduce")
    outer = sgd(outer_lr, momentum=outer_momentum, nesterov=nesterov and outer_momentum > 0)

    def init(params_NP):
        return DilocoState(inner.init(params_NP), outer.init(params_NP),
                           None if compressor is None else compressor.init(params_NP))

    def step(state, params_NP, batches, grad_fn, comm):
        trained, inner_state, loss = local_steps(params_NP, state.inner_state, inner, batches, grad_fn,
                                                 num_inner_steps)
        compressor_state = state.compressor_state
        if compressor is not None and ring:
            from peerlearn.compressors.ring import ring_all_reduce_mean

            mean, compressor_state = ring_all_reduce_mean(comm, params_NP - trained, compressor, compressor_state)
            pseudo_grad = mean.expand_as(trained)
        elif compressor is not None:
            sent, nbytes, compressor_state = compressor.update(params_NP - trained, compressor_state)
            pseudo_grad = comm.all_reduce_mean(sent, message_bytes=nbytes).expand_as(trained)
        elif combine == "all_reduce":
            pseudo_grad = params_NP - comm.all_reduce_mean(trained).expand_as(trained)
        else:
            pseudo_grad = params_NP - comm.mix(trained)
        updates, outer_state = outer.update(pseudo_grad, state.outer_state, params_NP)
        return (params_NP + updates, DilocoState(inner_state, outer_state, compressor_state),
                {"loss": float(loss.mean())})

    return Algorithm(init, step)


def local_sgd(optimizer: Transform, num_local_steps: int = 1, compressor: Compressor | None = None,
              ring: bool = False) -> Algorithm:
    """Local SGD: ``num_local_steps`` local steps, then every node takes the all-reduced average.

    DiLoCo with outer learning rate 1 and no outer momentum.
    """
    return diloco(optimizer, num_local_steps, outer_lr=1.0, outer_momentum=0.0, nesterov=False,
                  compressor=compressor, ring=ring)


# ---------------------------------------------------------------------------------------------
# Specs (algorithm.name: diloco, local_sgd)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field, SerializeAsAny  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, SYNC, Capabilities, LocalSteps, Synchronous, config_error  # noqa: E402
from peerlearn.compressors.base import COMPRESSORS, CompressorSpec  # noqa: E402
from peerlearn.spec import slot  # noqa: E402

_GLOBAL = Capabilities(engines=SYNC | {"p2p"}, global_model=True)


class _Compressed(LocalSteps):
    compressor: SerializeAsAny[CompressorSpec] = slot(COMPRESSORS, "none", "how each pseudo-gradient is "
                                                      "compressed, with error feedback (as a contraction)")
    reduce: Literal["gather", "ring"] = Field(
        "gather", description="how compressed pseudo-gradients are averaged: all-gathered (N - 1 messages per node, "
                              "with error feedback) or, for a quantizer, re-encoded at every hop of a ring "
                              "all-reduce (2 (N - 1) / N rows per node, no error feedback)")
    slots: ClassVar = {"compressor": COMPRESSORS}

    def check(self, cfg) -> None:
        super().check(cfg)
        if self.reduce == "ring" and not self.compressor.requantizable:
            ring = sorted(n for n, spec in COMPRESSORS.items() if spec.requantizable)
            raise config_error("algorithm.reduce", f"ring re-encodes partial sums, which only a quantizer "
                                                   f"({', '.join(ring)}) can; {self.compressor.name} needs "
                                                   "reduce: gather")

    def pseudo_gradient_compressor(self, ctx):
        """The pseudo-gradients' compressor with error feedback (all-gathered), bare (ring), or None (dense)."""
        from peerlearn.compressors import error_feedback

        if self.compressor.dense:  # dense all-reduce, no error-feedback state
            return None
        if self.reduce == "ring":
            return self.compressor.build(ctx.seed("compressor"))
        return error_feedback(self.compressor.build(ctx.seed("compressor")))


@ALGORITHMS.register
class DilocoSpec(_Compressed, Synchronous):
    """DiLoCo: inner steps, then an outer Nesterov step on the averaged pseudo-gradient (Douillard et al., 2023)."""

    name: Literal["diloco"] = "diloco"
    outer_lr: float = Field(0.7, gt=0.0, description="outer learning rate")
    outer_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="outer Nesterov momentum")
    combine: Literal["all_reduce", "gossip"] = Field("all_reduce", description="average the trained models with an "
                                                     "all-reduce or one gossip step")
    capabilities: ClassVar = _GLOBAL
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "its pseudo-gradients meet in a trusted all-reduce, with no gossip message to replace",
        "privacy": "noise on pseudo-gradients (outer-step DP) is not built yet"}

    def check(self, cfg) -> None:
        super().check(cfg)
        if not self.compressor.dense and self.combine != "all_reduce":
            raise config_error("algorithm.compressor", "diloco compresses the pseudo-gradients of its all-reduce; "
                                                       "set algorithm.combine: all_reduce")

    def build(self, ctx):
        return diloco(self.transform(), self.num_local_steps, self.outer_lr, self.outer_momentum,
                      combine=self.combine, compressor=self.pseudo_gradient_compressor(ctx),
                      ring=self.reduce == "ring")


@ALGORITHMS.register
class LocalSgdSpec(_Compressed, Synchronous):
    """Local SGD: inner steps, then a global average (Stich, ICLR 2019; Lin et al., ICLR 2020)."""

    name: Literal["local_sgd"] = "local_sgd"
    capabilities: ClassVar = _GLOBAL
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "its models meet in a trusted all-reduce, with no gossip message to replace",
        "privacy": "noise on the periodic average is not built yet"}

    def build(self, ctx):
        return local_sgd(self.transform(), self.num_local_steps, compressor=self.pseudo_gradient_compressor(ctx),
                         ring=self.reduce == "ring")
