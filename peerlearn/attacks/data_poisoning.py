"""Data-poisoning attacks: Byzantine nodes train honestly on corrupted data and send the result."""

from __future__ import annotations

from peerlearn.types import Tensor


def flip_labels(y: Tensor, num_classes: int) -> Tensor:
    """Untargeted label flipping ``y -> C - 1 - y``.

    References:
        Tolpegin et al., "Data Poisoning Attacks Against Federated Learning Systems", ESORICS 2020;
        Fung, Yoon & Beschastnikh, "The Limitations of Federated Learning in Sybil Settings", RAID 2020.
    """
    return num_classes - 1 - y
