"""When a run stops as diverged: one rule for every algorithm and every engine.

A run has diverged when, on the honest nodes,

1. the training loss or a model is not finite (NaN or infinity), or
2. the training loss has grown to more than ``divergence.factor`` times its value at the start: the
   initial models' loss on the first training samples (or, where that is not positive, the first
   step's loss), or
3. the root of the consensus distance (how far the models are from their average) has grown to more
   than ``factor`` times the root-mean-square norm of the models the run started from (or, when they
   start all zero, its own first positive value).

``factor`` defaults to 1e4: four orders of magnitude, far above any healthy run (a loss that rises
tenfold is a bad run, one that rises ten-thousandfold is arithmetic in free fall) and far below the
1e20-1e30 losses a run reaches before it overflows. The error names the quantity, the round and the
values, and the likely cause: a step size (the algorithm's ``lr``-keys) or, when the data's features
are large, the data's scale. Runs under attack are not stopped (their ruin is a result), and
``divergence.enabled: false`` turns the rule off, keeping every row.
"""

from __future__ import annotations

import math

from pydantic import Field

from peerlearn.spec import Spec

# features above this magnitude point at the data's scale rather than at the step size
LARGE_FEATURE = 1e3


class Diverged(FloatingPointError):
    """The run met the divergence rule (:mod:`peerlearn.divergence`)."""


class DivergenceSpec(Spec):
    """When a run stops as diverged: non-finite values, or the loss or the consensus distance grown by
    ``factor`` over their values at the start (every algorithm, every engine)."""

    enabled: bool = Field(True, description="stop a run whose loss or models diverge (false: run to the end and keep "
                                          "every row; runs under attack are never stopped)")
    factor: float = Field(1e4, gt=1.0, le=1e30, description="how many times its initial value the loss (and the root "
                                                            "of the consensus distance, against the initial models' "
                                                            "norm) may grow before the run stops")


class DivergenceWatch:
    """Applies the rule to one run: :meth:`step` after every training step (or event slice), :meth:`row`
    at every evaluated row. Raises :class:`Diverged`. Its state goes into checkpoints."""

    def __init__(self, cfg, params_NP=None, feature_scale: float = 0.0, active: bool = True):
        spec = getattr(cfg, "divergence", None) or DivergenceSpec()
        self.active = active and spec.enabled
        self.factor = spec.factor
        self.lr_keys = [f"algorithm.{k}" for k in type(cfg.algorithm).model_fields if k == "lr" or k.endswith("_lr")]
        self.feature_scale = feature_scale
        self.first_loss: float | None = None
        self.norm0: float | None = None
        if params_NP is not None:
            rms = float(params_NP.double().pow(2).sum(1).mean().sqrt())
            self.norm0 = rms if rms > 0 else None

    def state_dict(self) -> dict:
        return {"first_loss": self.first_loss, "norm0": self.norm0}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.first_loss, self.norm0 = state["first_loss"], state["norm0"]

    def cause(self) -> str:
        if self.feature_scale > LARGE_FEATURE:
            return (f"the data's features reach |x| = {self.feature_scale:.3g}: standardise them (zero mean, unit "
                    f"variance), or lower {' / '.join(self.lr_keys) or 'the step size'}")
        return f"likely a step size too large: lower {' / '.join(self.lr_keys) or 'the step size'}"

    def _stop(self, round_: int, what: str) -> None:
        raise Diverged(f"training diverged at round {round_}: {what}; {self.cause()} "
                       f"(the rule: divergence.factor, divergence.enabled)")

    def step(self, round_: int, loss: float, nan_means_idle: bool = False) -> None:
        """The mean training loss of a step (or of an event slice). A NaN loss is divergence, unless
        ``nan_means_idle`` (the asynchronous engine: nobody trained, no information)."""
        if not self.active or math.isnan(loss) and nan_means_idle:
            return
        if not math.isfinite(loss):
            self._stop(round_, f"the training loss is {loss}")
        if self.first_loss is None:
            self.first_loss = abs(loss)
        elif self.first_loss > 0 and loss > self.factor * self.first_loss:
            self._stop(round_, f"the training loss {loss:.3g} is {loss / self.first_loss:.3g} times its initial value "
                               f"{self.first_loss:.3g} (more than divergence.factor = {self.factor:g})")

    def row(self, round_: int, params_NP, consensus: float) -> None:
        """An evaluated row: are the models ``params_NP`` finite, and how far apart are they (``consensus``)?"""
        if not self.active:
            return
        if not math.isfinite(consensus):  # a finite consensus distance needs every value finite: checked only here
            if not bool(params_NP.isfinite().all()):
                self._stop(round_, "the models hold non-finite values")
            self._stop(round_, f"the consensus distance is {consensus}")
        if consensus <= 0:
            return
        spread = math.sqrt(consensus)
        if self.norm0 is None:
            self.norm0 = spread  # the models started equal and zero: the first spread is the scale
        elif spread > self.factor * self.norm0:
            self._stop(round_, f"the models' distance from their average, {spread:.3g}, is {spread / self.norm0:.3g} "
                               f"times the initial models' norm {self.norm0:.3g} (more than divergence.factor = "
                               f"{self.factor:g})")


def watch_run(built) -> DivergenceWatch:
    """The rule for ``built`` (from :func:`peerlearn.build.build`), inactive under attack (a model attack on the
    messages or a data attack: a run the attacker ruins is the result, not a bug): the reference loss is
    the initial models' training loss (a few honest nodes' models on the first training samples: a run
    whose first round already explodes is caught), the scale is the initial honest models' norm."""
    import torch

    from peerlearn.models.functional import make_loss_fn

    ds = built.dataset
    x = ds.x_train
    scale = float(x.abs().max()) if x.is_floating_point() and x.numel() else 0.0
    initial_NP = built.params_NP[built.honest_N]
    attacked = built.threat is not None or built.attack_test is not None
    watch = DivergenceWatch(built.config, initial_NP, scale, active=not attacked)
    if watch.active and len(initial_NP):
        loss = make_loss_fn(built.flat)
        with torch.no_grad():
            first = [float(loss(p, x[:512], ds.y_train[:512])) for p in initial_NP[:4]]
        if all(math.isfinite(v) and v > 0 for v in first):
            watch.first_loss = sum(first) / len(first)
    return watch
