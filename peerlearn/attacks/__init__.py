"""Attacks by Byzantine nodes, applied by the engine at the message boundary (no algorithm knows).

Model poisoning rules craft the message a Byzantine node sends from what it can see;
data poisoning changes what a Byzantine node trains on; :mod:`placement` picks who is Byzantine.
"""

from peerlearn.attacks.base import ATTACKS, AttackSpec, ThreatSpec
from peerlearn.attacks.model_poisoning import (HonestView, alie, dmpa, gaussian, ipm, large_norm,
                                               sign_flip)
from peerlearn.attacks.data_poisoning import (add_trigger, attack_test_set, backdoor_poison,  # noqa: I001
                                              flip_labels, label_flip_poison)
from peerlearn.attacks.placement import place_byzantine, place_nodes

__all__ = ["ATTACKS", "AttackSpec", "ThreatSpec", "HonestView", "add_trigger", "alie", "attack_test_set",
           "backdoor_poison", "dmpa", "flip_labels", "gaussian", "ipm", "label_flip_poison", "large_norm",
           "place_byzantine", "place_nodes", "sign_flip"]
