"""Offline datasets, partitions across nodes and per-node batch sampling."""

from peerlearn.data.batching import NodeSampler
from peerlearn.data.datasets import Dataset, load_dataset
from peerlearn.data.partition import dirichlet, iid, quantity_skew, shards

__all__ = ["Dataset", "NodeSampler", "dirichlet", "iid", "load_dataset", "quantity_skew", "shards"]
