"""Differential privacy on shared messages: clipping, Gaussian noise (independent or pairwise-cancelling) or
randomized quantization (RQM), and per-node (epsilon, delta) accounting with Opacus."""

from peerlearn.privacy.accountant import epsilons, gaussian_rdp
from peerlearn.privacy.gaussian import MessagePrivacy, PrivacyState, effective_multipliers, gaussian_messages, \
    pairwise_noise

__all__ = ["MessagePrivacy", "PrivacyState", "effective_multipliers", "epsilons", "gaussian_messages",
           "gaussian_rdp", "pairwise_noise"]
