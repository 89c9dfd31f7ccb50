"""The data families: the :class:`Dataset` type, datasets and partitions (their specs and registries),
and the ``data:`` section that names one of each."""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple

import numpy as np
import torch
from pydantic import Field, SerializeAsAny

from peerlearn.spec import DataContext, Registry, Spec, config_error, slot


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
    # for rows of the training arrays that are a group's own test data (LEAF users'): that group, else -1;
    # a natural partition makes them the node's local test split
    local_groups: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _labels(y, what: str, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{where}: {what} must be one label per sample (1-D), got shape {y.shape}")
    if y.dtype.kind == "f":
        bad = int((~np.isfinite(y) | (y != np.round(y))).sum())
        if bad:
            raise ValueError(f"{where}: {what} must be integer class ids; {bad} of {len(y)} are not")
    elif y.dtype.kind not in "iub":
        raise ValueError(f"{where}: {what} must be integer class ids, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise ValueError(f"{where}: {what} must be class ids >= 0; {int((y < 0).sum())} are negative")
    return y


def from_arrays(name: str, x_tr, y_tr, x_te, y_te, num_classes: int | None = None) -> Dataset:
    """A :class:`Dataset` from four arrays (numpy or torch): float inputs become float32, integer
    inputs stay int64 (tokens); labels are int64 in ``0..num_classes-1``. Shapes, labels and values
    are checked (:func:`check_dataset`); a failure names the array and the count."""
    where = f"data.dataset {name}"

    def inputs(x, what):
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"{where}: {what} must hold one sample per row with at least one feature (shape "
                             f"(N, ...)), got shape {x.shape}")
        x = torch.as_tensor(x)
        return x.long() if not x.is_floating_point() else x.float()

    y_tr, y_te = _labels(y_tr, "y_train", where), _labels(y_te, "y_test", where)
    k = int(num_classes if num_classes is not None else max(y_tr.max(initial=0), y_te.max(initial=0)) + 1)
    ds = Dataset(inputs(x_tr, "x_train"), torch.from_numpy(y_tr), inputs(x_te, "x_test"), torch.from_numpy(y_te), k,
                 name)
    check_dataset(ds)
    return ds


def check_dataset(ds: Dataset) -> Dataset:
    """Shapes agree, labels lie in ``0..num_classes-1``, inputs are finite; else ValueError naming the array."""
    where = f"data.dataset {ds.name}"
    for x, y, part in ((ds.x_train, ds.y_train, "train"), (ds.x_test, ds.y_test, "test")):
        if len(x) != len(y):
            raise ValueError(f"{where}: x_{part} has {len(x)} samples but y_{part} has {len(y)} labels")
        if len(x) == 0:
            raise ValueError(f"{where}: x_{part} is empty")
        out = int(((y < 0) | (y >= ds.num_classes)).sum())
        if out:
            raise ValueError(f"{where}: {out} labels of y_{part} are outside 0..{ds.num_classes - 1}")
        if x.is_floating_point():
            bad = int((~torch.isfinite(x)).sum())
            if bad:
                raise ValueError(f"{where}: x_{part} holds {bad} non-finite values (NaN or inf)")
    if ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        raise ValueError(f"{where}: x_test samples have shape {tuple(ds.x_test.shape[1:])}, x_train samples "
                         f"{tuple(ds.x_train.shape[1:])}")
    return ds


class DatasetSpec(Spec):
    """A dataset: ``build(ctx)`` returns a :class:`Dataset`, or ``(x_train, y_train, x_test, y_test)``
    arrays (a user's loader may return plain arrays)."""

    def build(self, ctx: DataContext):
        raise NotImplementedError

    @classmethod
    def availability(cls) -> tuple[str, str]:
        """``(status, detail)`` for ``peerlearn data list``: ``"ready"`` (bundled or generated: nothing to
        get), ``"installed"`` or ``"missing"`` (files this machine needs; detail: where, or the command that
        gets them), ``"your files"`` (``data.path`` names them)."""
        return "ready", "nothing to install" if cls.__module__.startswith("peerlearn.") else \
            f"a plugin's dataset ({cls.__module__})"

    def load(self, ctx: DataContext) -> Dataset:
        out = self.build(ctx)
        if isinstance(out, Dataset):
            return check_dataset(out)
        if isinstance(out, (tuple, list)) and len(out) == 4:
            return from_arrays(self.name, *out)
        raise TypeError(f"data.dataset {self.name}: build returned {type(out).__name__}; expected a Dataset or "
                        "(x_train, y_train, x_test, y_test)")


class FileDatasetSpec(DatasetSpec):
    """A dataset read from a user's files: ``data.path`` is required (``needs`` says what it names)."""

    path: str | None = Field(None, description="where the files are")
    needs: ClassVar[str] = "a path"

    def check(self, cfg) -> None:
        if not self.path:
            raise config_error("data.path", f"dataset '{self.name}' needs {self.needs}")

    @classmethod
    def availability(cls) -> tuple[str, str]:
        return "your files", f"data.path: {cls.needs}"


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
    train_samples: int | None = Field(None, ge=1, description="train on a seeded subset of this many training "
                                      "samples (default: the whole training set; a small one to study overfitting)")
    augment: Literal["none", "crop_flip"] = Field("none", description="training-batch augmentation of images: "
                                                  "crop_flip = random crop after zero padding, and horizontal flips "
                                                  "(seeded per node and sample)")
    crop_padding: int = Field(4, ge=0, le=64, description="crop_flip: pixels of zero padding on each side")
    slots: ClassVar = {"dataset": DATASETS, "partition": PARTITIONS}

    def check(self, cfg) -> None:
        if self.train_samples is not None and self.partition.capabilities.needs_groups:
            raise config_error("data.train_samples", f"a subset of the samples would cut the natural groups "
                                                     f"partition {self.partition.name} splits by; not combined")
        if self.relay_fraction and self.local_test_fraction:
            raise config_error("data.local_test_fraction", "relay nodes hold no data to hold out; not combined "
                                                           "with data.relay_fraction")
        if self.relay_fraction and cfg.num_byzantine:
            raise config_error("data.relay_fraction", "relay nodes are not combined with Byzantine nodes yet")
