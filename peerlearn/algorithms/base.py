"""The algorithm family (``algorithm.name``): a spec per algorithm, ``build(ctx) -> Algorithm``.

Shared fields come from small bases an algorithm's spec combines: :class:`AlgorithmSpec` (``lr``,
``batch_size``), :class:`Optimized` (a local optimizer, itself a family), :class:`LocalSteps`,
:class:`Synchronous` (rounds, ``final_merge``); :class:`~peerlearn.algorithms.semi_decentralized.ServerRounds`
adds semi-decentralized server averages. A field lives only on the specs of the algorithms that read it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, SerializeAsAny

from peerlearn.optim import OPTIMIZERS, OptimizerSpec
from peerlearn.spec import BuildContext, Capabilities, Registry, Spec, config_error, slot
from peerlearn.types import Algorithm, AsyncAlgorithm, Transform

SYNC = frozenset({"simulator", "distributed"})  # engines of the synchronous algorithms that run on ranks
GOSSIP = SYNC | {"p2p"}  # ... of those that only gossip with neighbours (mix, gather, push): a swarm runs them too


class AlgorithmSpec(Spec):
    """A learning algorithm: ``build(ctx) -> Algorithm`` (or ``AsyncAlgorithm``)."""

    lr: float = Field(0.1, gt=0.0, description="local learning rate")
    # why model attacks ("attack") and privacy noise ("privacy") do not act on the algorithm's messages, in one
    # line each (issue 37: every algorithm that sends messages is attacked and noised, or says why not)
    why_not: ClassVar[dict[str, str]] = {}
    batch_size: int = Field(16, ge=1, description="mini-batch size per node and step")

    def build(self, ctx: BuildContext) -> Algorithm | AsyncAlgorithm:
        raise NotImplementedError

    def message_values(self, num_params: int, num_classes: int) -> int:
        """The widest row the algorithm sends, in float32 values per node and message (the model's P unless it
        sends something else): a swarm refuses wider rows as not this run's (plus two: a weight, a count)."""
        return num_params

    @property
    def extra_copies(self) -> int:
        """N x P tensors of the algorithm's own state beyond the parameters, the gradients, the trained and
        the mixed models and the optimizer's state (the memory estimate; 1 unless a spec knows better)."""
        return 1

    def make(self, ctx: BuildContext) -> Algorithm | AsyncAlgorithm:
        """``build``, wrapped by what the shared bases add (each base's ``make`` wraps its ``super().make``:
        server rounds inside, the final merge outermost)."""
        return self.build(ctx)

    @property
    def uses_server(self) -> bool:
        """A server averages a sample in some rounds (semi-decentralized)."""
        return False


ALGORITHMS = Registry("algorithm", AlgorithmSpec, "algorithm.name", "learning algorithms")


class Optimized(AlgorithmSpec):
    """An algorithm with a local optimizer (``algorithm.optimizer`` and its keys)."""

    optimizer: SerializeAsAny[OptimizerSpec] = slot(OPTIMIZERS, "sgd", "local (inner) optimizer")
    slots: ClassVar = {"optimizer": OPTIMIZERS}

    def transform(self) -> Transform:
        return self.optimizer.build(self.lr)


class LocalSteps(Optimized):
    """Local optimizer steps per round."""

    num_local_steps: int = Field(1, ge=1, le=100_000, description="local optimizer steps per round")


class Synchronous(AlgorithmSpec):
    """Synchronous rounds; optionally one global average after the last round."""

    final_merge: bool = Field(False, description="after the last round, all nodes average once (one all-reduce)")
    finetune_steps: int = Field(0, ge=0, le=1_000_000, description="after the last round (and the final merge), "
                                "each node takes this many local steps on its own data: the personalization "
                                "baseline, a shared model fine-tuned locally")


    def make(self, ctx: BuildContext) -> Algorithm:
        from peerlearn.algorithms.final_merge import with_final_finetune, with_final_merge

        algo = super().make(ctx)
        if self.final_merge:
            algo = with_final_merge(algo, ctx.num_rounds)
        if self.finetune_steps:
            algo = with_final_finetune(algo, ctx.num_rounds, self.finetune_optimizer(), self.finetune_steps)
        return algo

    def finetune_optimizer(self):
        """The fine-tuning steps' optimizer: the algorithm's local one (plain SGD at its lr without one)."""
        if hasattr(self, "transform"):
            return self.transform()
        from peerlearn.optim import sgd

        return sgd(getattr(self, "lr", 0.1))

    def check(self, cfg) -> None:
        if self.final_merge and cfg.threat.poisons == "messages":
            raise config_error("algorithm.final_merge", "the final merge is a trusted all-reduce; it cannot run "
                                                        "under a model-poisoning attack")


class Asynchronous(LocalSteps):
    """Run by the event engine: nodes wake on their own timers."""

    period_s: float | None = Field(None, gt=0.0, le=1e9, description="a node's timer period in simulated seconds (default: "
                                   "gossip_learning one round, the others as fast as each node's local steps and "
                                   "sends allow)")
    capabilities: ClassVar = Capabilities(engines=frozenset({"simulator"}), asynchronous=True)


def weights(spec, ctx: BuildContext):
    """Per-node weights of ``spec.weighting``: the data sizes, or None (uniform)."""
    return ctx.data_sizes_N if spec.weighting == "data_size" else None


__all__ = ["ALGORITHMS", "GOSSIP", "SYNC", "AlgorithmSpec", "Asynchronous", "Capabilities", "Field", "Literal", "LocalSteps",
           "Optimized", "Synchronous", "config_error", "weights"]
