"""Attacks by Byzantine nodes, applied by the engine at the message boundary (no algorithm knows).

Model poisoning rules craft the message a Byzantine node sends from what it can see;
data poisoning changes what a Byzantine node trains on; :mod:`placement` picks who is Byzantine.
"""

from peerlearn.attacks.data_poisoning import (DATA_ATTACKS, add_trigger, attack_test_set, backdoor_poison,
                                              flip_labels, label_flip_poison)
from peerlearn.attacks.model_poisoning import (MODEL_ATTACKS, HonestView, alie, dmpa, gaussian, ipm, large_norm,
                                               sign_flip)
from peerlearn.attacks.placement import PLACEMENTS, place_byzantine, place_nodes

__all__ = ["DATA_ATTACKS", "MODEL_ATTACKS", "PLACEMENTS", "HonestView", "add_trigger", "alie", "attack_test_set",
           "backdoor_poison", "dmpa", "flip_labels", "gaussian", "ipm", "label_flip_poison", "large_norm",
           "place_byzantine", "place_nodes", "sign_flip"]
