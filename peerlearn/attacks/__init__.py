"""Attacks by Byzantine nodes, applied by the engine at the message boundary (no algorithm knows).

Model poisoning rules craft the message a Byzantine node sends from what it can see;
data poisoning changes what a Byzantine node trains on; :mod:`placement` picks who is Byzantine.
"""

from peerlearn.attacks.data_poisoning import flip_labels
from peerlearn.attacks.model_poisoning import MODEL_ATTACKS, alie, gaussian, ipm, large_norm, sign_flip
from peerlearn.attacks.placement import PLACEMENTS, place_byzantine

__all__ = ["MODEL_ATTACKS", "PLACEMENTS", "alie", "flip_labels", "gaussian", "ipm", "large_norm",
           "place_byzantine", "sign_flip"]
