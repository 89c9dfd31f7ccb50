"""LEAF's federated datasets from the JSON files LEAF writes: FEMNIST and Shakespeare, one user per group.

A LEAF directory holds ``train/`` and ``test/``, each with one or more ``*.json`` files of the form
``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}`` (what LEAF's
``preprocess.sh`` writes; several files are concatenated). The task is read from the samples:

- **FEMNIST**: ``x`` is 784 pixel values (a 28x28 image, row-major), ``y`` a class in 0..61;
- **Shakespeare**: ``x`` is a string of characters, ``y`` the next character; characters become
  tokens over peerlearn's printable-ASCII vocabulary (the same as the plays reader), any other
  character becomes a space (counted in the dataset's note).

Every training sample's group is its user (partition ``natural``: one LEAF user per node, as
decentralizepy does), and every user's own test samples are kept as that node's local test split
(``acc_local_mean``); the global test set is all users' test samples. Nothing is downloaded: LEAF's
scripts fetch and preprocess the raw data; point ``data.path`` at the result.

References:
    Caldas et al., "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097, 2018.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from peerlearn.data.base import DATASETS, Dataset, FileDatasetSpec, check_dataset
from peerlearn.data.shakespeare import VOCAB

FEMNIST_CLASSES = 62
_INDEX = {c: i for i, c in enumerate(VOCAB)}


def _read_split(folder: Path) -> list[tuple[str, list, list]]:
    """``(user, xs, ys)`` of every user in the JSON files of ``folder``, files in name order."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise ValueError(f"data.path: {folder} holds no LEAF .json files")
    users = []
    for path in files:
        try:
            blob = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"data.path: {path} is not JSON ({str(err).splitlines()[0]})") from None
        if not isinstance(blob, dict) or not isinstance(blob.get("users"), list) or \
                not isinstance(blob.get("user_data"), dict):
            raise ValueError(f"data.path: {path} is not a LEAF file (needs 'users' (a list) and 'user_data' "
                             "(a mapping))")
        counts = blob.get("num_samples")
        if counts is not None and (not isinstance(counts, list) or len(counts) != len(blob["users"])):
            raise ValueError(f"data.path: {path}: 'num_samples' must list one count per user")
        for k, user in enumerate(blob["users"]):
            data = blob["user_data"].get(user)
            if not isinstance(data, dict) or not isinstance(data.get("x"), list) or not isinstance(data.get("y"), list):
                raise ValueError(f"data.path: {path}: user {user!r} has no 'x' and 'y' lists in 'user_data'")
            if len(data["x"]) != len(data["y"]):
                raise ValueError(f"data.path: {path}: user {user!r} has {len(data['x'])} inputs but "
                                 f"{len(data['y'])} labels")
            if counts is not None and counts[k] != len(data["y"]):
                raise ValueError(f"data.path: {path}: user {user!r} has {len(data['y'])} samples but num_samples "
                                 f"says {counts[k]}")
            kind = _kind(data["x"], data["y"], f"data.path: {path}: user {user!r}")
            if users and kind != users[0][3]:
                raise ValueError(f"data.path: {path}: user {user!r} holds {kind} samples, earlier users {users[0][3]}")
            users.append((str(user), data["x"], data["y"], kind))
    return [u[:3] for u in users]


def _kind(xs: list, ys: list, where: str) -> str:
    """``femnist`` or ``shakespeare`` from one user's samples, each checked (``where`` names file and user)."""
    if all(isinstance(x, str) for x in xs):
        if not all(isinstance(y, str) and len(y) == 1 for y in ys):
            raise ValueError(f"{where}: Shakespeare labels must be single characters")
        return "shakespeare"
    if all(isinstance(x, list) and len(x) == 784 for x in xs):
        if not all(isinstance(y, int) and 0 <= y < FEMNIST_CLASSES for y in ys):
            raise ValueError(f"{where}: FEMNIST labels must be integer classes in 0..61")
        return "femnist"
    raise ValueError(f"{where}: unrecognised LEAF samples (x must be 784 pixel values for FEMNIST or a string for "
                     "Shakespeare)")


def _task(users: list[tuple[str, list, list]], where: Path) -> str:
    return _kind(users[0][1], users[0][2], f"data.path: {where}")


def _encode_femnist(users, where: Path) -> tuple[np.ndarray, np.ndarray]:
    xs = [x for _, ux, _ in users for x in ux]
    ys = [y for _, _, uy in users for y in uy]
    try:
        x = np.asarray(xs, dtype=np.float32)
        y = np.asarray(ys, dtype=np.int64)
    except (ValueError, TypeError):
        raise ValueError(f"data.path: {where}: FEMNIST samples must be 784 numbers each and integer labels") from None
    if x.ndim != 2 or x.shape[1] != 784:
        raise ValueError(f"data.path: {where}: FEMNIST samples must be 784 numbers each, got shape {x.shape}")
    if len(y) and (y.min() < 0 or y.max() >= FEMNIST_CLASSES):
        raise ValueError(f"data.path: {where}: FEMNIST labels must lie in 0..61")
    return x, y


def _encode_chars(users, where: Path) -> tuple[np.ndarray, np.ndarray, int]:
    xs = [x for _, ux, _ in users for x in ux]
    ys = [y for _, _, uy in users for y in uy]
    lengths = {len(x) for x in xs if isinstance(x, str)}
    if len(lengths) != 1 or not all(isinstance(x, str) for x in xs):
        raise ValueError(f"data.path: {where}: Shakespeare inputs must be strings of one length, got lengths "
                         f"{sorted(lengths)[:5]}")
    if not all(isinstance(y, str) and len(y) == 1 for y in ys):
        raise ValueError(f"data.path: {where}: Shakespeare labels must be single characters")
    space = _INDEX[" "]
    replaced = 0

    def codes(text: str) -> list[int]:
        nonlocal replaced
        out = [_INDEX.get(c, -1) for c in text]
        replaced += out.count(-1)
        return [space if c < 0 else c for c in out]

    x = np.asarray([codes(s) for s in xs], dtype=np.int64).reshape(len(xs), lengths.pop())
    y = np.asarray([codes(c)[0] for c in ys], dtype=np.int64)
    return x, y, replaced


def load_leaf(path: str | None, image: bool = False) -> Dataset:
    """A LEAF directory (``train/`` and ``test/`` of JSON files) as a :class:`Dataset` with users as groups."""
    if not path:
        raise ValueError("data.path: dataset 'leaf' needs the folder LEAF wrote (holding train/ and test/)")
    root = Path(path).expanduser()
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise ValueError(f"data.path: {root} must hold LEAF's train/ and test/ folders of .json files")
    train, test = _read_split(root / "train"), _read_split(root / "test")
    task = _task(train, root / "train")
    if _task(test, root / "test") != task:
        raise ValueError(f"data.path: {root}: train/ holds {task} samples but test/ holds others")
    names = [u for u, _, _ in train]
    if len(set(names)) != len(names):
        raise ValueError(f"data.path: {root / 'train'}: a user appears twice")
    group_of = {u: k for k, u in enumerate(names)}
    if task == "femnist":
        (x_tr, y_tr), (x_te, y_te) = _encode_femnist(train, root / "train"), _encode_femnist(test, root / "test")
        if image:
            x_tr, x_te = x_tr.reshape(-1, 1, 28, 28), x_te.reshape(-1, 1, 28, 28)
        num_classes, tokens = FEMNIST_CLASSES, False
    else:
        (x_tr, y_tr, _), (x_te, y_te, _) = _encode_chars(train, root / "train"), _encode_chars(test, root / "test")
        if x_tr.shape[1] != x_te.shape[1]:
            raise ValueError(f"data.path: {root}: train inputs are {x_tr.shape[1]} characters, test inputs "
                             f"{x_te.shape[1]}")
        num_classes, tokens = len(VOCAB), True
    groups = np.repeat(np.arange(len(train)), [len(uy) for _, _, uy in train])
    # each user's own test samples ride along in the training arrays, never sampled for training (group -1),
    # so a node's local test split indexes the same arrays as its training data
    test_owner = np.concatenate([np.full(len(uy), group_of.get(u, -1)) for u, _, uy in test]) if test else \
        np.empty(0, dtype=np.int64)
    own = test_owner >= 0
    as_tensor = (lambda a: torch.from_numpy(a)) if tokens else (lambda a: torch.from_numpy(a).float())
    x_all = np.concatenate([x_tr, x_te[own]])
    y_all = np.concatenate([y_tr, y_te[own]])
    ds = Dataset(as_tensor(x_all), torch.from_numpy(y_all), as_tensor(x_te), torch.from_numpy(y_te), num_classes,
                 f"leaf-{task}", groups=np.concatenate([groups, np.full(int(own.sum()), -1)]), group_names=names,
                 local_groups=np.concatenate([np.full(len(y_tr), -1), test_owner[own]]))
    return check_dataset(ds)


@DATASETS.register
class LeafSpec(FileDatasetSpec):
    """LEAF's FEMNIST or Shakespeare from the JSON files LEAF writes (Caldas et al., 2018); users are groups."""

    name: Literal["leaf"] = "leaf"
    path: str | None = Field(None, description="the folder LEAF wrote, holding train/ and test/ of .json files")
    needs: ClassVar[str] = "the folder LEAF wrote (holding train/ and test/)"

    def build(self, ctx):
        return load_leaf(self.path, image=ctx.image_inputs)
