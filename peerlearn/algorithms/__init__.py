"""Algorithms: each an ``Algorithm(init, step)`` built by a short function from its parts."""

from peerlearn.algorithms.centralized import centralized
from peerlearn.algorithms.dsgd import dsgd
from peerlearn.algorithms.fedavg import fedavg
from peerlearn.algorithms.local_only import local_only

__all__ = ["centralized", "dsgd", "fedavg", "local_only"]
