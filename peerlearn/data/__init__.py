"""Offline datasets, partitions across nodes and per-node batch sampling; :data:`DATASETS` and
:data:`PARTITIONS` are the families' registries."""

from peerlearn.data.base import DATASETS, PARTITIONS, DataSpec, Dataset, DatasetSpec, PartitionSpec, from_arrays
from peerlearn.data.batching import NodeSampler
from peerlearn.data import adapters, datasets, images, leaf, shakespeare  # noqa: F401 (registers the datasets)
from peerlearn.data.partition import dirichlet, iid, quantity_skew, shards

__all__ = ["DATASETS", "PARTITIONS", "DataSpec", "Dataset", "DatasetSpec", "NodeSampler", "PartitionSpec", "dirichlet",
           "from_arrays", "iid", "quantity_skew", "shards"]
