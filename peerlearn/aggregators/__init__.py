"""Aggregators over each node's received models: ``rule(x_NKP, valid_NK, **hyper) -> x_NP``.

Column 0 is the node's own model; padded entries (``valid_NK`` False) never count.
``mean(x_KP, weights_K)`` is the single-node weighted mean used by FedAvg and all-reduce.
"""

from peerlearn.aggregators.base import AGGREGATORS, AggregatorSpec
from peerlearn.aggregators.mean import masked_mean, mean
from peerlearn.aggregators.robust import (bulyan, centered_clipping, coordinate_median, geometric_median, krum, multi_krum,
                                          nearest_neighbor_mean, trimmed_mean)
from peerlearn.aggregators.sybil import foolsgold
from peerlearn.aggregators.aligned import align, aligned_mean
from peerlearn.aggregators.loss_delta import loss_delta_mean, loss_delta_scores
from peerlearn.aggregators.flag import flag_aggregate, flag_scores
from peerlearn.aggregators.reputation import Combinator, reputation_combinator, trust_weights
from peerlearn.aggregators.blocklist import blocklist_combinator, proven_byzantine
from peerlearn.aggregators.bristle import bristle_combinator, class_weights
from peerlearn.aggregators.variance_correction import layer_variances, restore_variance, variance_corrected

__all__ = ["AGGREGATORS", "AggregatorSpec", "Combinator", "blocklist_combinator", "bristle_combinator", "class_weights",
           "proven_byzantine", "reputation_combinator", "trust_weights", "align", "aligned_mean", "bulyan", "centered_clipping", "coordinate_median", "flag_aggregate", "flag_scores", "foolsgold", "geometric_median", "krum", "loss_delta_mean", "loss_delta_scores",
           "masked_mean", "mean",
           "layer_variances", "multi_krum", "nearest_neighbor_mean", "restore_variance", "trimmed_mean",
           "variance_corrected"]
