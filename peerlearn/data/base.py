"""The data families: the :class:`Dataset` type, datasets and partitions (their specs and registries),
and the ``data:`` section that names one of each."""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple

import numpy as np
import torch
from pydantic import Field, SerializeAsAny

from peerlearn.spec import BuildContext, Registry, Spec, config_error, slot


class Dataset(NamedTuple):
    """Float32 (or int64 token) inputs and int64 labels with a fixed train/test split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    groups: np.ndarray | None = None  # natural group of each training sample (-1: never sampled), or None
    group_names: list[str] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def from_arrays(name: str, x_tr, y_tr, x_te, y_te, num_classes: int | None = None) -> Dataset:
    """A :class:`Dataset` from four arrays (numpy or torch): float inputs become float32, integer
    inputs stay int64 (tokens); labels are int64 in ``0..num_classes-1``."""
    def inputs(x):
        x = torch.as_tensor(np.asarray(x))
        return x.long() if not x.is_floating_point() else x.float()

    y_tr, y_te = np.asarray(y_tr, dtype=np.int64), np.asarray(y_te, dtype=np.int64)
    k = int(num_classes if num_classes is not None else max(y_tr.max(), y_te.max()) + 1)
    return Dataset(inputs(x_tr), torch.from_numpy(y_tr), inputs(x_te), torch.from_numpy(y_te), k, name)


class DatasetSpec(Spec):
    """A dataset: ``build(ctx)`` returns a :class:`Dataset`, or ``(x_train, y_train, x_test, y_test)``
    arrays (a user's loader may return plain arrays)."""

    def build(self, ctx: BuildContext):
        raise NotImplementedError

    def load(self, ctx: BuildContext) -> Dataset:
        out = self.build(ctx)
        if isinstance(out, Dataset):
            return out
        if isinstance(out, (tuple, list)) and len(out) == 4:
            return from_arrays(self.name, *out)
        raise TypeError(f"data.dataset {self.name}: build returned {type(out).__name__}; expected a Dataset or "
                        "(x_train, y_train, x_test, y_test)")


class PartitionSpec(Spec):
    """How training samples are split across nodes: ``build(labels, num_nodes, seed, min_size) -> parts``."""

    def build(self, labels: np.ndarray, num_nodes: int, seed: int, min_size: int) -> list[np.ndarray]:
        raise NotImplementedError


DATASETS = Registry("dataset", DatasetSpec, "data.dataset", "datasets (all offline)")
PARTITIONS = Registry("partition", PartitionSpec, "data.partition", "splits of the training data across nodes")


class DataSpec(Spec):
    """The data section: a dataset and a partition, each with its own keys, and what every run has."""

    dataset: SerializeAsAny[DatasetSpec] = slot(DATASETS, "digits", "dataset (all offline)")
    partition: SerializeAsAny[PartitionSpec] = slot(PARTITIONS, "iid", "how training data is split across nodes")
    min_samples_per_node: int = Field(2, ge=1, description="every node gets at least this many training samples")
    local_test_fraction: float = Field(0.0, ge=0.0, lt=1.0,
                                       description="fraction of each node's data held out as its local test set")
    relay_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of nodes that hold no data and only "
                                  "relay (they gossip but do not train)")
    relay_placement: Literal["hubs", "random"] = Field("hubs", description="which nodes relay: the highest-degree "
                                                       "ones, or random ones")
    test_samples: int | None = Field(None, ge=1, description="evaluate on a seeded subset of this many test samples "
                                     "(default: the whole test set)")
    slots: ClassVar = {"dataset": DATASETS, "partition": PARTITIONS}

    def check(self, cfg) -> None:
        if self.relay_fraction and self.local_test_fraction:
            raise config_error("data.local_test_fraction", "relay nodes hold no data to hold out; not combined "
                                                           "with data.relay_fraction")
        if self.relay_fraction and cfg.num_byzantine:
            raise config_error("data.relay_fraction", "relay nodes are not combined with Byzantine nodes yet")
