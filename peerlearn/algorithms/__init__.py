"""Algorithms: each an ``Algorithm(init, step)`` built by a short function from its parts, with its spec
(``algorithm.name``) beside it; :data:`ALGORITHMS` is the family's registry."""

from peerlearn.algorithms.base import ALGORITHMS, AlgorithmSpec
from peerlearn.algorithms.dsgd import communication_schedule, dsgd, gossip_combine  # noqa: I001 (registry order)
from peerlearn.algorithms.gradient_tracking import gradient_tracking
from peerlearn.algorithms.push_sum import push_sum
from peerlearn.algorithms.choco import choco
from peerlearn.algorithms.diloco import diloco, local_sgd
from peerlearn.algorithms.modest import modest
from peerlearn.algorithms.fedavg import fedavg
from peerlearn.algorithms.anarchic import anarchic
from peerlearn.algorithms.centralized import centralized
from peerlearn.algorithms.local_only import local_only
from peerlearn.algorithms.spsa import spsa
from peerlearn.algorithms.gossip_learning import gossip_learning
from peerlearn.algorithms.async_push_sum import async_push_sum
from peerlearn.algorithms.async_local_sgd import async_local_sgd
from peerlearn.algorithms.semi_decentralized import with_server_rounds
from peerlearn.algorithms.scool import scool
from peerlearn.algorithms.experts import experts
from peerlearn.algorithms.distillation import distillation
from peerlearn.algorithms.dadao import dadao

__all__ = ["ALGORITHMS", "AlgorithmSpec", "anarchic", "async_local_sgd", "async_push_sum", "centralized", "choco",
           "communication_schedule", "dadao", "diloco", "distillation", "dsgd", "experts", "fedavg", "gossip_combine", "gossip_learning",
           "gradient_tracking", "local_only", "local_sgd", "modest", "push_sum", "scool", "spsa", "with_server_rounds"]
