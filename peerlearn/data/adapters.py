"""The data people already have, as datasets: any map-style ``torch.utils.data.Dataset`` (``data.dataset:
torch``) and a Hugging Face ``datasets`` folder written by ``save_to_disk`` (``data.dataset: hf_disk``).

Each is read once per run into peerlearn's batched layout (one stacked tensor of inputs, one of labels),
with a progress bar on a terminal; after that, training draws every node's mini-batch with one indexing op
as for the built-in datasets, and the result is the same as the same arrays loaded from an ``.npz`` file.

The torch factory is code: its module must be one of the config's ``plugins`` (so it is imported, recorded
in ``summary.json`` and, on ``--resume``, trusted exactly as a plugin is); nothing is imported here. A
torchvision dataset already on disk works where the user's torchvision matches their torch: list
``torchvision.datasets`` in ``plugins`` and pass ``download: false``. ``datasets`` is the optional extra
``peerlearn[hf]``; nothing is fetched (``load_from_disk`` reads the folder).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from peerlearn.data.base import DATASETS, DatasetSpec, FileDatasetSpec, from_arrays
from peerlearn.data.datasets import _split  # the seeded, stratified split npz files get
from peerlearn.spec import config_error, file_plugin_module


def _as_array(value: Any, what: str) -> np.ndarray:
    """One sample's input or label as a numpy array (a tensor, an array, a PIL image, a number, a list)."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as err:  # noqa: BLE001 (anything the user's dataset returns)
        raise ValueError(f"{what}: a sample of type {type(value).__name__} is not an array ({err})") from None


def _scaled(x: np.ndarray) -> np.ndarray:
    """Inputs as floats: 8-bit pixels (uint8, as PIL images and IDX files hold them) scaled to [0, 1]; integer
    inputs of any other kind (token ids) kept as integers."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255)
    return x if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)


def materialise(dataset, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x_N..., y_N)`` of a map-style dataset whose items are ``(input, label)``, read once in index order."""
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{what}: the dataset is empty")
    xs, ys = [], []
    for i in _progress(range(n), n, what):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError(f"{what}: item {i} is a {type(item).__name__}; expected (input, label)")
        xs.append(_as_array(item[0], what))
        ys.append(_as_array(item[1], what))
    return _checked(_stack(xs, what), np.stack(ys), what)


def _stack(xs: list, what: str) -> np.ndarray:
    shapes = {np.shape(x) for x in xs}
    if len(shapes) != 1:
        raise ValueError(f"{what}: samples have different shapes ({', '.join(map(str, sorted(shapes)[:3]))}); "
                         "give every input one shape (e.g. a resize transform)")
    return np.stack(xs)


def _checked(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs scaled (:func:`_scaled`), labels one integer class per sample."""
    y = y.reshape(len(y), -1)
    if y.shape[1] != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what}: labels must be one integer class per sample, got shape {y.shape[1:]} of "
                         f"{y.dtype}")
    return _scaled(x), y[:, 0].astype(np.int64)


def _progress(items, samples: int, what: str):
    """``items``, with a progress bar on a terminal when there are enough ``samples`` to wait for."""
    if samples < 10_000 or not sys.stderr.isatty():
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, total=len(items), description=f"reading {what}", transient=True,
                 console=Console(stderr=True))


@DATASETS.register
class TorchDatasetSpec(DatasetSpec):
    """Any map-style torch Dataset, made by a function of one of the config's plugins.

    The factory returns ``(train, test)``, a mapping with ``train`` and ``test``, or one dataset split here
    by ``test_fraction``; each item is ``(input, label)``."""

    name: Literal["torch"] = "torch"
    factory: str = Field("", description="module:callable returning the dataset(s); the module must be listed in "
                                         "plugins (a .py plugin by its file name: my_data.py:make)")
    factory_kwargs: dict[str, Any] = Field({}, description="keyword arguments of the factory")
    test_kwargs: dict[str, Any] | None = Field(None, description="if given, the factory is called again with "
                                               "factory_kwargs updated by these for the test split (torchvision: "
                                               "{train: false})")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="test share when the factory gives one dataset")
    num_classes: int | None = Field(None, ge=2, description="classes (default: the largest label + 1)")

    def check(self, cfg) -> None:
        module, _, attr = self.factory.partition(":")
        if not module or not attr:
            raise config_error("data.factory", f"expected module:callable (e.g. my_data.py:make), got {self.factory!r}")
        if _plugin_module_name(module) not in {_plugin_module_name(p) for p in cfg.plugins}:
            raise config_error("data.factory", f"{module} is not among the config's plugins; list it there (the "
                                               "factory is code, imported and trusted as a plugin is)")

    @classmethod
    def availability(cls) -> tuple[str, str]:
        return "your files", "data.factory: a plugin's function returning torch Datasets"

    def build(self, ctx):
        make = _factory(self.factory)
        where = f"data.factory {self.factory}"
        out = make(**self.factory_kwargs)
        if self.test_kwargs is not None:
            out = (out, make(**{**self.factory_kwargs, **self.test_kwargs}))
        if isinstance(out, dict):
            out = (out.get("train"), out.get("test"))
        if isinstance(out, (tuple, list)) and len(out) == 2 and all(hasattr(o, "__getitem__") for o in out):
            (x_tr, y_tr), (x_te, y_te) = materialise(out[0], f"{where} (train)"), materialise(out[1], f"{where} (test)")
        else:
            x_tr, y_tr, x_te, y_te = _split(*materialise(out, where), self.test_fraction, ctx.run_seed)
        return from_arrays("torch", x_tr, y_tr, x_te, y_te, num_classes=self.num_classes)


def _plugin_module_name(spec: str) -> str:
    """The module a plugin entry or a factory's module part names: ``pkg.mod``, or a file's stem."""
    return Path(spec).stem if spec.endswith(".py") or "/" in spec else spec


def _factory(ref: str):
    """The callable of an already imported plugin module (never imported here)."""
    module_part, _, attr = ref.partition(":")
    name = _plugin_module_name(module_part)
    module = sys.modules.get(name) if not (module_part.endswith(".py") or "/" in module_part) else None
    module = module or sys.modules.get(file_plugin_module(name))
    if module is None:
        raise ValueError(f"data.factory: {module_part} was not imported; list it in plugins")
    target = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"data.factory: {module_part} has no {attr}")
    if not callable(target):
        raise ValueError(f"data.factory: {ref} is not callable")
    return target


@DATASETS.register
class HfDiskSpec(FileDatasetSpec):
    """A Hugging Face datasets folder written by save_to_disk (the extra peerlearn[hf]).

    A DatasetDict gives its train and test splits; one Dataset is split here by ``test_fraction``."""

    name: Literal["hf_disk"] = "hf_disk"
    path: str | None = Field(None, description="the folder save_to_disk wrote")
    x_column: str = Field("x", description="the input column (numbers, arrays or images)")
    y_column: str = Field("label", description="the integer label column")
    train_split: str = Field("train", description="the training split of a DatasetDict")
    test_split: str = Field("test", description="the test split of a DatasetDict (absent: split by test_fraction)")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="test share when there is no test split")
    num_classes: int | None = Field(None, ge=2, description="classes (default: the label feature's, else the "
                                                          "largest label + 1)")
    needs: ClassVar[str] = "the folder a datasets save_to_disk wrote"

    @classmethod
    def availability(cls) -> tuple[str, str]:
        import importlib.util

        if importlib.util.find_spec("datasets") is None:
            return "missing", ("pip install 'peerlearn[hf]' (Hugging Face datasets), then data.path: a save_to_disk "
                               "folder")
        return "your files", f"data.path: {cls.needs}"

    def build(self, ctx):
        try:
            import datasets
        except ImportError:
            raise ValueError("data.dataset hf_disk needs Hugging Face datasets: pip install 'peerlearn[hf]'") from None
        if not Path(self.path).is_dir():
            raise ValueError(f"data.path: {self.path} is not a folder written by save_to_disk")
        try:
            loaded = datasets.load_from_disk(self.path)
        except Exception as err:  # noqa: BLE001 (a folder of something else)
            raise ValueError(f"data.path: {self.path} is not a save_to_disk folder ({type(err).__name__})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if self.train_split not in loaded:
                raise ValueError(f"data.train_split: {self.train_split!r} is not a split of {self.path} "
                                 f"({', '.join(loaded)})")
            train, test = loaded[self.train_split], loaded.get(self.test_split)
        else:
            train, test = loaded, None
        x_tr, y_tr = self._arrays(train)
        if test is None:
            x_tr, y_tr, x_te, y_te = _split(x_tr, y_tr, self.test_fraction, ctx.run_seed)
        else:
            x_te, y_te = self._arrays(test)
        k = self.num_classes or _class_count(train.features.get(self.y_column))
        return from_arrays(f"hf:{Path(self.path).name}", x_tr, y_tr, x_te, y_te, num_classes=k)

    def _arrays(self, split) -> tuple[np.ndarray, np.ndarray]:
        for key, column in (("data.x_column", self.x_column), ("data.y_column", self.y_column)):
            if column not in split.column_names:
                raise ValueError(f"{key}: no column {column!r} in {self.path} ({', '.join(split.column_names)})")
        rows, what = split.with_format("numpy").select_columns([self.x_column, self.y_column]), f"data.path {self.path}"
        xs, ys = [], []
        for start in _progress(range(0, len(rows), HF_CHUNK), len(rows), what):
            chunk = rows[start:start + HF_CHUNK]  # columns as numpy arrays: images decoded, lists stacked
            x = chunk[self.x_column]
            xs.append(_stack(list(x), what) if x.dtype == object else x)
            ys.append(chunk[self.y_column])
        if not xs:
            raise ValueError(f"{what}: the split is empty")
        return _checked(np.concatenate(xs), np.concatenate(ys), what)


HF_CHUNK = 4096  # rows converted at once


def _class_count(feature) -> int | None:
    """The number of classes a ``ClassLabel`` feature declares, else None."""
    return getattr(feature, "num_classes", None)
