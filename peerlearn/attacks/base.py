"""The attack family (``threat.attack``) and the ``threat:`` section: who is Byzantine and what they do.

A model-poisoning member (``capabilities.poisons == "messages"``) builds
``craft(own_BP, seen, generator) -> messages_BP``, applied by the engine at the message boundary;
a data-poisoning member (``"data"``) builds ``(poison(x, y, u) -> (x, y), attack test set (x, y))``
from ``ctx.dataset``. Both take the run's :class:`~peerlearn.spec.BuildContext`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, SerializeAsAny

from peerlearn.attacks.placement import PLACEMENTS
from peerlearn.spec import BuildContext, Registry, Spec, config_error, slot


class AttackSpec(Spec):
    """What Byzantine nodes do: ``build(ctx)`` gives a model attack's ``craft`` or a data attack's
    ``(poison, attack test set)``."""

    def build(self, ctx: BuildContext):
        raise NotImplementedError


ATTACKS = Registry("attack", AttackSpec, "threat.attack", "what Byzantine nodes do")


class ThreatSpec(Spec):
    """The threat section: how many Byzantine nodes, where, and their attack (with its keys)."""

    num_byzantine: int = Field(0, ge=0, description="number of Byzantine nodes")
    fraction: float | None = Field(None, ge=0.0, lt=1.0, description="fraction of Byzantine nodes (instead of "
                                   "num_byzantine)")
    placement: Literal[PLACEMENTS] = Field("random", description="where Byzantine nodes sit: random, degree (hubs), "
                                                                 "cluster (a connected ball)")
    attack: SerializeAsAny[AttackSpec] | None = slot(ATTACKS, None, "what Byzantine nodes do (none: they behave "
                                                                    "honestly)")
    collusion: Literal["all", "neighbors"] = Field(
        "all", description="honest messages an attacker sees: everyone's, or its neighbours'")
    sybil: bool = Field(False, description="all Byzantine identities send one identical message (Sybil clones)")
    space: Literal["model", "update"] = Field(
        "model", description="model: a model attack crafts the message from the honest models; update: from the "
                             "honest updates (each message minus the node's previous one), and a Byzantine node "
                             "sends its previous message plus the crafted update (D-SGD with one gossip step)")
    slots: ClassVar = {"attack": ATTACKS}

    def count(self, num_nodes: int) -> int:
        return int(round(self.fraction * num_nodes)) if self.fraction is not None else self.num_byzantine

    @property
    def poisons(self) -> str | None:
        """``"messages"``, ``"data"`` or None: what the attack poisons."""
        return None if self.attack is None else self.attack.capabilities.poisons

    def check(self, cfg) -> None:
        n, count = cfg.num_nodes, self.count(cfg.num_nodes)
        if self.fraction is not None and "num_byzantine" in self.model_fields_set:
            raise config_error("threat.fraction", "give threat.num_byzantine or threat.fraction, not both")
        if count >= n:
            raise config_error("threat.num_byzantine", f"must be < num_nodes={n}, got {count}")
        if self.attack is not None and count == 0:
            raise config_error("threat.attack", f"{self.attack.name} needs Byzantine nodes; set threat.num_byzantine")
        if self.attack is not None and self.collusion == "neighbors" and \
                cfg.topology.schedule.capabilities.time_varying:
            raise config_error("threat.collusion", "'neighbors' needs a static topology; use 'all'")
        algo = cfg.algorithm
        if self.space == "update":
            if self.poisons == "data":
                raise config_error("threat.space", f"update space is where a model attack crafts its message; "
                                                   f"{self.attack.name} poisons data")
            if algo.name != "dsgd" or getattr(algo, "gossip_steps", 1) != 1 or getattr(algo, "share_fraction", 1) < 1:
                raise config_error("threat.space", "update space needs one message per node and round, each the "
                                                   "whole model: dsgd with gossip_steps 1 and share_fraction 1")
        if self.poisons == "messages" and not algo.capabilities.attackable:
            data = [name for name, c in ATTACKS.items() if c.capabilities.poisons == "data"]
            why = algo.why_not.get("attack", "model attacks on its messages are not modelled")
            raise config_error("threat.attack", f"model-poisoning attacks replace gossip messages; {algo.name}: "
                                                f"{why} (use dsgd, or a data attack: {', '.join(data)})")
