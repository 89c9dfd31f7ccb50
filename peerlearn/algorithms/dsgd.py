"""Decentralized SGD (D-SGD / D-PSGD) with local steps, in both update orders, and its variants.

- ``atc`` (adapt-then-combine, "diffusion"): ``x_i <- sum_j W_ij (x_j - eta * local_update_j)``.
- ``cta`` (combine-then-adapt, D-PSGD): ``x_i <- sum_j W_ij x_j + local_update_i(x_i)``; the
  local update is computed at the pre-mixing iterate, so computation and communication overlap.

Variants, each one argument:

- ``num_local_steps = tau > 1``: the local update is the sum of tau optimizer steps (local D-SGD);
- ``aggregator``: a robust rule over the gathered neighbour models instead of ``W x``;
- ``gossip_steps = Q``: Q gossip rounds per training round (``X W^Q``; DFedSAM-MGS);
- ``sam_rho > 0``: sharpness-aware local steps (DFedSAM);
- ``communicate(round) -> bool``: skip gossip in some rounds (communication schedules);
- ``combine``: replaces the whole combine step (e.g. variance-corrected averaging);
- ``acceleration_lambda``: accelerated gossip, the Chebyshev two-term recursion over rounds with
  that spectral bound of ``W^Q`` (:mod:`peerlearn.algorithms.accelerated_gossip`); one more N x P
  tensor of state (the previous round's models);
- ``share_fraction = alpha < 1``: partial model sharing: each round only a random alpha of the
  coordinates is gossiped, the same subset at every node (drawn from the round and a shared seed, so
  no indices travel; the messages are ``4 alpha P`` bytes); the other coordinates stay local. Every
  coordinate is mixed by the same doubly stochastic W or not at all, so the network mean is kept;
- ``privacy``: each node's update is clipped and noised before anything built from it is shared
  (:mod:`peerlearn.privacy`); the privacy spent is reported at evaluation rows.
- ``gossip_state``: the local optimizer's per-coordinate state (Adam's two moments, SGD's momentum) is
  gossiped with the same W after the models, instead of staying local: decentralized Adam with gossiped
  moments, the variant "From Promise to Practice" compares with local moments; one more message per
  state tensor.

References:
    Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms? A Case Study for
    Decentralized Parallel Stochastic Gradient Descent", NeurIPS 2017 (D-PSGD, CTA).
    Koloskova et al., "A Unified Theory of Decentralized SGD with Changing Topology and Local
    Updates", ICML 2020 (local steps, ATC form).
    Shi et al., "Improving the Model Consistency of Decentralized Federated Learning", ICML 2023
    (DFedSAM, DFedSAM-MGS).
    Dhasade, Kermarrec, Pires, Sharma & Vujasinovic, "Decentralized Learning Made Easy with
    DecentralizePy", EuroMLSys 2023 (partial model sharing).
    Wang, Zhang, Wu & Johansson, "From Promise to Practice: Realizing High-performance Decentralized
    Training", ICLR 2025 (decentralized Adam: local or gossiped moments).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from peerlearn.algorithms.accelerated_gossip import accelerated, chebyshev_omega
from peerlearn.algorithms.local import local_steps
from peerlearn.device import draw
from peerlearn.rng import step_generator
from peerlearn.types import Algorithm, Transform


class DsgdState(NamedTuple):
    opt_state: Any
    round: int = 0
    privacy: Any = None  # peerlearn.privacy.PrivacyState when the updates are privatised
    prev_NP: Any = None  # accelerated gossip: the models at the start of the previous round
    combine: Any = None  # a stateful combine step's state (peerlearn.aggregators.reputation.Combinator)


def gossip_combine(aggregator: Callable | None = None, gossip_steps: int = 1) -> Callable:
    """``combine(comm, x_NP)``: Q steps of ``W x``, or of a rule over the gathered neighbour models."""

    def combine(comm, x_NP):
        for _ in range(gossip_steps):
            x_NP = comm.mix(x_NP) if aggregator is None else aggregator(*comm.gather(x_NP, include_self=True))
        return x_NP

    return combine


def dsgd(optimizer: Transform, num_local_steps: int = 1, order: str = "atc",
         aggregator: Callable | None = None, gossip_steps: int = 1, sam_rho: float = 0.0,
         communicate: Callable[[int], bool] | None = None, combine: Callable | None = None,
         share_fraction: float = 1.0, share_seed: int = 0, privacy=None,
         acceleration_lambda: float | None = None, combinator=None, gossip_state: bool = False) -> Algorithm:
    """Decentralized SGD: local steps, then gossip with the round's mixing matrix (ATC or CTA order).

    With ``aggregator`` (``rule(x_NKP, valid_NK) -> x_NP``, e.g. a robust rule) each node combines
    its own model and its neighbours' messages by that rule instead of the weighted sum ``W x``; with
    ``combinator`` (:class:`~peerlearn.aggregators.reputation.Combinator`) by a combine step that keeps state
    across rounds (a running reputation).
    """
    if order not in ("atc", "cta"):
        raise ValueError(f"algorithm.order must be 'atc' or 'cta', got {order!r}")
    if gossip_steps < 1:
        raise ValueError(f"algorithm.gossip_steps must be >= 1, got {gossip_steps}")
    if not 0.0 < share_fraction <= 1.0:
        raise ValueError(f"algorithm.share_fraction must be in (0, 1], got {share_fraction}")
    if acceleration_lambda is not None:
        chebyshev_omega(acceleration_lambda, 1)  # checks the range
    combine = combine or gossip_combine(aggregator, gossip_steps)

    def init(params_NP):
        return DsgdState(optimizer.init(params_NP), 0, None if privacy is None else privacy.init(params_NP),
                         combine=None if combinator is None else combinator.init(params_NP.shape[0]))

    def step(state, params_NP, batches, grad_fn, comm):
        round_ = state.round + 1
        trained, opt_state, loss = local_steps(params_NP, state.opt_state, optimizer, batches, grad_fn,
                                               num_local_steps, sam_rho=sam_rho)
        private = state.privacy
        if privacy is not None:
            update, private = privacy.privatize(trained - params_NP, private, comm)
            trained = params_NP + update
        prev = params_NP if acceleration_lambda is not None else None  # the next round's x^{t-1}
        kept, extra = state.combine, {}
        talks = communicate is None or communicate(round_)
        if gossip_state and talks:
            opt_state = mix_state(comm, opt_state, params_NP.shape)
        if not talks:
            params_NP = trained
        elif combinator is not None:
            mixed, kept, extra = combinator.step(comm, trained if order == "atc" else params_NP, params_NP, kept,
                                                 round_)
            params_NP = mixed if order == "atc" else mixed + (trained - params_NP)
        elif order == "atc":
            params_NP = momentum(shared_combine(comm, trained, round_), state, round_)
        else:
            params_NP = momentum(shared_combine(comm, params_NP, round_), state, round_) + (trained - params_NP)
        return params_NP, DsgdState(opt_state, round_, private, prev, kept), {"loss": float(loss.mean()), **extra}

    def momentum(mixed_NP, state, round_):
        if acceleration_lambda is None:
            return mixed_NP
        return accelerated(mixed_NP, state.prev_NP, chebyshev_omega(acceleration_lambda, round_))

    def shared_combine(comm, x_NP, round_):
        if share_fraction == 1.0:
            return combine(comm, x_NP)
        idx = shared_coordinates(x_NP.shape[1], share_fraction, share_seed, round_)
        out = x_NP.clone()
        out[:, idx] = combine(comm, x_NP[:, idx])
        return out

    def report(state):
        return {"epsilon": float(privacy.epsilon(state.privacy).max())}

    return Algorithm(init, step, None if privacy is None else report)


def mix_state(comm, state: Any, shape: torch.Size) -> Any:
    """``state`` with every ``N x P`` tensor in it (an optimizer's per-coordinate state) replaced by one gossip step
    of it, ``W s``; counters and scalars stay local."""
    if isinstance(state, torch.Tensor):
        return comm.mix(state) if state.shape == shape else state
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(mix_state(comm, s, shape) for s in state))
    if isinstance(state, (list, tuple)):
        return type(state)(mix_state(comm, s, shape) for s in state)
    return state


def shared_coordinates(num_params: int, fraction: float, seed: int, round_: int) -> torch.Tensor:
    """The round's random ``fraction`` of the coordinates, the same at every node: drawn from
    ``(seed, round)``, so receivers know it without any index being sent."""
    g = step_generator(seed, round_)
    return draw(torch.randperm, num_params, generator=g)[:max(1, int(round(fraction * num_params)))]


def communication_schedule(num_rounds: int, every: int = 1, late_fraction: float = 0.0) -> Callable[[int], bool]:
    """Gossip every ``every`` rounds, and every round during the last ``late_fraction`` of the run.

    Spending the gossip budget late is what "A Single Merging Suffices" finds generalises best.

    References:
        Zhu et al., "A Single Merging Suffices: Recovering Server-based Learning Performance in
        Decentralized Learning", 2025 (arXiv:2507.06542).
    """
    late_start = num_rounds - int(round(late_fraction * num_rounds))
    return lambda round_: round_ % every == 0 or round_ > late_start


# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: dsgd)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field, SerializeAsAny  # noqa: E402

from peerlearn.aggregators.base import AGGREGATORS, AggregatorSpec  # noqa: E402
from peerlearn.algorithms.semi_decentralized import ServerRounds  # noqa: E402
from peerlearn.algorithms.base import (ALGORITHMS, GOSSIP, Capabilities, LocalSteps,  # noqa: E402
                                       Synchronous, config_error)
from peerlearn.spec import slot  # noqa: E402


@ALGORITHMS.register
class DsgdSpec(LocalSteps, Synchronous, ServerRounds):
    """Decentralized SGD: local steps, then gossip (Lian et al., NeurIPS 2017); with a robust aggregator,
    sharpness-aware steps (DFedSAM, Shi et al., ICML 2023), partial sharing and privacy noise."""

    name: Literal["dsgd"] = "dsgd"
    order: Literal["atc", "cta"] = Field("atc", description="adapt-then-combine or combine-then-adapt")
    gossip_steps: int = Field(1, ge=1, le=10_000, description="gossip rounds per training round (DFedSAM-MGS: Q)")
    sam_rho: float = Field(0.0, ge=0.0, description="sharpness-aware local steps with this radius (DFedSAM); "
                           "0 = plain SGD steps")
    comm_every: int = Field(1, ge=1, description="gossip only every this many rounds")
    comm_late_fraction: float = Field(0.0, ge=0.0, le=1.0, description="gossip every round during this last "
                                      "fraction of the run (communication spent late)")
    variance_correction: bool = Field(False, description="restore each layer's variance after averaging")
    share_fraction: float = Field(1.0, gt=0.0, le=1.0, description="partial model sharing: gossip only this "
                                  "random fraction of the coordinates each round (the same at every node)")
    acceleration: Literal["none", "chebyshev"] = Field("none", description="accelerated gossip: the Chebyshev "
                                                      "two-term recursion over rounds (Liu & Morse 2011)")
    acceleration_lambda: float | None = Field(None, ge=0.0, lt=1.0, description="its spectral bound of the "
                                              "round's W^gossip_steps (default: computed from the static graph)")
    gossip_optimizer_state: bool = Field(False, description="gossip the local optimizer's moments (Adam's m and v, "
                                         "SGD's momentum) with the models each round instead of keeping them local")
    aggregator: SerializeAsAny[AggregatorSpec] = slot(AGGREGATORS, "gossip", "how a node combines its own and "
                                                                             "received models")
    slots: ClassVar = {"aggregator": AGGREGATORS}
    capabilities: ClassVar = Capabilities(engines=GOSSIP, attackable=True, private=True)

    def check(self, cfg) -> None:
        super().check(cfg)
        agg = self.aggregator
        if self.share_fraction < 1.0 and self.variance_correction:
            raise config_error("algorithm.share_fraction", "variance correction works on whole layers; not "
                                                           "combined with partial sharing")
        if self.variance_correction and not agg.capabilities.linear:
            raise config_error("algorithm.variance_correction", f"corrects linear gossip averaging; not combined "
                                                                f"with aggregator {agg.name}")
        if agg.capabilities.stateful:
            for key, clash in {"gossip_steps": self.gossip_steps > 1, "share_fraction": self.share_fraction < 1.0}.items():
                if clash:
                    raise config_error(f"algorithm.{key}", f"{agg.name} keeps one view of each neighbour per round; "
                                                          "not combined with several or partial gossip steps")
        if not agg.capabilities.linear and cfg.topology.schedule.capabilities.time_varying:
            raise config_error("algorithm.aggregator", f"{agg.name} needs a static topology (its f is checked "
                                                       f"against the graph), got topology.schedule "
                                                       f"{cfg.topology.schedule.name}")
        if agg.capabilities.common_init and not cfg.model.same_init:
            raise config_error("model.same_init", f"{agg.name} measures update histories from the common initial "
                                                  "model, so it needs same_init: true")
        if self.acceleration == "chebyshev":
            self._check_acceleration(cfg)
        if self.gossip_optimizer_state:
            self._check_gossip_state(cfg)
        if cfg.privacy.active and (self.comm_every > 1 or self.comm_late_fraction):
            raise config_error("privacy.clip", "rounds without gossip would later share unnoised updates; not "
                                               "combined with algorithm.comm_every or comm_late_fraction")

    @property
    def extra_copies(self) -> int:  # the previous round's models when accelerated
        return int(self.acceleration != "none")

    def _check_acceleration(self, cfg) -> None:
        clashes = {"aggregator": not self.aggregator.capabilities.linear, "variance_correction": self.variance_correction,
                   "share_fraction": self.share_fraction < 1.0,
                   "comm_every": self.comm_every > 1 or bool(self.comm_late_fraction)}
        for key, clash in clashes.items():
            if clash:
                raise config_error(f"algorithm.{key}", "accelerated gossip needs every round's combine to be the "
                                                      "linear gossip step W x of every coordinate")
        if self.acceleration_lambda is None and not cfg.topology.schedule.uses_graph:
            raise config_error("algorithm.acceleration_lambda", f"topology.schedule {cfg.topology.schedule.name} has "
                                                                "no static graph to compute it from; give it")

    def _check_gossip_state(self, cfg) -> None:
        clashes = {"algorithm.aggregator": not self.aggregator.capabilities.linear,
                   "algorithm.share_fraction": self.share_fraction < 1.0,
                   "threat.attack": cfg.threat.poisons == "messages",
                   "privacy.clip": cfg.privacy.active}
        for key, clash in clashes.items():
            if clash:
                raise config_error(key, "gossip_optimizer_state mixes the optimizer's moments with plain W, unguarded "
                                        "and unnoised; not combined with robust or partial gossip, message attacks "
                                        "or privacy")
        if self.optimizer.state_copies == 0:
            raise config_error("algorithm.gossip_optimizer_state", f"optimizer {self.optimizer.name} keeps no "
                                                                   "per-coordinate state (use adamw, or sgd with "
                                                                   "momentum)")

    def _lambda(self, ctx) -> float | None:
        """The spectral bound of ``W^Q`` the recursion uses (None: no acceleration)."""
        if self.acceleration == "none":
            return None
        if self.acceleration_lambda is not None:
            return self.acceleration_lambda
        from peerlearn.topology.mixing import second_largest_eigenvalue

        lam = second_largest_eigenvalue(ctx.mixing(ctx.adjacency)) ** self.gossip_steps
        if lam >= 1.0:
            raise config_error("algorithm.acceleration", "the static graph's W has a second eigenvalue of modulus 1 "
                                                         "(disconnected or periodic): nothing to accelerate")
        return lam

    def build(self, ctx):
        from peerlearn.aggregators.variance_correction import variance_corrected

        from peerlearn.aggregators.base import probe_rule

        from peerlearn.aggregators.reputation import Combinator

        rule = self.aggregator.build(ctx)
        combinator = rule if isinstance(rule, Combinator) else None
        if combinator is not None:
            rule = None
        else:
            probe_rule(self.aggregator, rule, ctx)  # a plugin's rule: its output shape, before any round
        combine = gossip_combine(rule, self.gossip_steps)
        if self.variance_correction:
            combine = variance_corrected(combine, ctx.layer_slices)
        communicate = None
        if self.comm_every > 1 or self.comm_late_fraction:
            communicate = communication_schedule(ctx.num_rounds, self.comm_every, self.comm_late_fraction)
        return dsgd(self.transform(), self.num_local_steps, self.order, sam_rho=self.sam_rho, communicate=communicate,
                    combine=combine, share_fraction=self.share_fraction, share_seed=ctx.seed("share"),
                    privacy=ctx.privacy.build(ctx, self.lr), acceleration_lambda=self._lambda(ctx),
                    combinator=combinator, gossip_state=self.gossip_optimizer_state)
