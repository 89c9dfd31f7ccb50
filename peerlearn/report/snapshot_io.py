"""Checkpoints that load as data: a run's snapshot written as tensors, numbers, strings, lists and dicts only,
read back with ``torch.load(weights_only=True)``.

A checkpoint is a file in a run folder, and a run folder may come from elsewhere: unpickling it must not
run code. A pickle of the engine's snapshot would name classes (each algorithm's NamedTuple state, numpy's
arrays and dtypes), and admitting those to the unpickler is admitting whatever a forged file says about
them (a numpy dtype's state can be made into a pointer). So the snapshot is *encoded* before saving:

- a NamedTuple becomes ``{"__namedtuple__": "module.Class", "fields": {...}}`` and is rebuilt only if that
  class is already imported (``sys.modules``; nothing is imported because a file names it) and is a
  NamedTuple type, through ``cls._make`` (no user ``__new__`` runs);
- a numpy array becomes ``{"__ndarray__": tensor}`` (its dtype kept by the tensor), a numpy scalar
  ``{"__npscalar__": tensor}``;
- tuples, lists, dicts (string or integer keys), tensors, ``None``, bools, ints, floats and strings are
  kept as they are; anything else is refused when the checkpoint is *written*, naming where it is.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "peerlearn-snapshot-1"
_KEYS = ("__namedtuple__", "__ndarray__", "__npscalar__")


class SnapshotError(ValueError):
    """A snapshot that cannot be written or read as data."""


def _is_namedtuple_type(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields") and hasattr(cls, "_make")


def encode(obj: Any, where: str = "snapshot") -> Any:
    """``obj`` as a tree that ``torch.load(weights_only=True)`` reads back (see the module docstring)."""
    if isinstance(obj, (np.str_, np.bytes_)):  # before str: numpy's str and float64 subclass Python's
        return obj.item()
    if isinstance(obj, np.generic):
        return {"__npscalar__": _from_numpy(np.asarray(obj).reshape(1), where)}
    if isinstance(obj, torch.Tensor):  # saved from the host: a GPU run's checkpoint resumes on a CPU and back
        return obj if obj.device.type == "cpu" else obj.detach().cpu()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise SnapshotError(f"{where}: a numpy array of Python objects cannot be saved as data")
        return {"__ndarray__": _from_numpy(obj, where)}
    if isinstance(obj, tuple) and _is_namedtuple_type(type(obj)):
        cls = type(obj)
        if "<locals>" in cls.__qualname__:
            raise SnapshotError(f"{where}: the state type {cls.__qualname__} is defined inside a function; define it "
                                "at module level so that a checkpoint can name it")
        return {"__namedtuple__": f"{cls.__module__}.{cls.__qualname__}",
                "fields": {f: encode(v, f"{where}.{f}") for f, v in zip(cls._fields, obj)}}
    if isinstance(obj, (list, tuple)):
        items = [encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, dict):
        if any(k in obj for k in _KEYS):
            raise SnapshotError(f"{where}: a dict with the reserved key(s) {[k for k in _KEYS if k in obj]}")
        bad = [k for k in obj if not isinstance(k, (str, int))]
        if bad:
            raise SnapshotError(f"{where}: dict keys must be strings or integers, not {type(bad[0]).__name__}")
        return {k: encode(v, f"{where}.{k}") for k, v in obj.items()}
    raise SnapshotError(f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be saved as data "
                        "(states hold tensors, numbers, strings, lists, dicts and NamedTuples of them)")


def _from_numpy(arr: np.ndarray, where: str) -> torch.Tensor:
    try:
        return torch.from_numpy(np.ascontiguousarray(arr).copy())
    except TypeError:
        raise SnapshotError(f"{where}: a numpy array of dtype {arr.dtype} cannot be saved as data") from None


def _namedtuple_class(name: str) -> type:
    module, _, qualname = name.rpartition(".")
    owner = sys.modules.get(module)  # never imported on a file's word
    obj: Any = owner
    for part in qualname.split(".") if owner is not None else ():
        obj = getattr(obj, part, None)
    if owner is None or not _is_namedtuple_type(obj):
        raise SnapshotError(f"state type {name!r} is not a loaded NamedTuple (is the plugin that defines it "
                            "named in the run's config?)")
    return obj


def decode(obj: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(obj, dict):
        if "__namedtuple__" in obj:
            cls = _namedtuple_class(str(obj["__namedtuple__"]))
            fields = obj.get("fields")
            if not isinstance(fields, dict) or list(fields) != list(cls._fields):
                raise SnapshotError(f"state {obj['__namedtuple__']!r}: fields {list(fields or {})} are not "
                                    f"{list(cls._fields)}")
            return cls._make(decode(v) for v in fields.values())
        if "__ndarray__" in obj:
            return _tensor(obj["__ndarray__"]).numpy()
        if "__npscalar__" in obj:
            return _tensor(obj["__npscalar__"]).numpy()[0]
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(decode(v) for v in obj)
    return obj


def _tensor(t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise SnapshotError(f"an array entry holds a {type(t).__name__}, not a tensor")
    return t


def save(snapshot: dict, path: str | Path) -> None:
    """Write ``snapshot`` to ``path`` as data (not atomic: the caller renames)."""
    torch.save({"format": FORMAT, "snapshot": encode(snapshot)}, path)


def load(path: str | Path) -> dict:
    """Read a snapshot written by :func:`save`; raises on anything else, running nothing from the file."""
    data = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SnapshotError("not a peerlearn snapshot of this format (written by an earlier peerlearn, or "
                            "not by peerlearn)")
    snapshot = decode(data["snapshot"])
    if not isinstance(snapshot, dict):
        raise SnapshotError("the snapshot is not a mapping")
    return snapshot
