"""Image datasets a user has on disk: CIFAR-10/100 from their python-pickle batches, and any folder of
images with one subfolder per class (the ImageFolder layout).

- **CIFAR** (``data.dataset: cifar10`` or ``cifar100``, ``data.path`` the extracted
  ``cifar-10-batches-py`` or ``cifar-100-python`` folder): 50,000 + 10,000 colour 32x32 images. The
  batches are pickles by design; they are read with an unpickler that admits only dicts, lists, bytes,
  numbers and integer arrays, and rebuilds each array itself from its raw bytes (numpy's unpickling
  functions never run, so neither a foreign pickle nor a forged dtype can run code or crash the
  process). Inputs are normalised per channel with the training set's mean and standard deviation (the usual normalisation: for the real CIFAR-10 these
  are the familiar (0.491, 0.482, 0.447) and (0.247, 0.243, 0.262)). CIFAR-100 uses its 100 fine labels.
- **image_folder** (``data.path`` holding ``train/<class>/*`` and ``test/<class>/*``, or only class
  folders, then split by ``test_fraction``): PNG, JPEG, BMP or GIF files decoded with Pillow, converted to
  ``channels`` (1: grey, 3: RGB), resized to ``image_size`` when given (else every image must share the
  first one's size), scaled to [0, 1] and normalised per channel like CIFAR. Classes are the sorted
  folder names.

References:
    Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009 (CIFAR-10/100).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from peerlearn.data.base import DATASETS, Dataset, FileDatasetSpec, from_arrays

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_CIFAR = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{k}" for k in range(1, 6)], ["test_batch"], b"labels", 10),
          "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100)}


_INT_DTYPES = ("u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8")  # pixels are bytes, labels integers


class _DType:
    """Stands in for ``numpy.dtype`` while a batch is unpickled: numpy never sees a dtype state from the file
    (a forged one can make numpy read a pointer out of raw bytes). Only integer dtypes in numpy's own
    canonical state are admitted."""

    def __init__(self, name, align=False, copy=True):
        if not isinstance(name, str) or name not in _INT_DTYPES:
            raise pickle.UnpicklingError(f"holds a numpy dtype {name!r}, which a CIFAR batch never does")
        self.name, self.dtype = name, None

    def __setstate__(self, state):
        canonical = list(np.dtype(self.name).__reduce__()[2])
        if not isinstance(state, tuple) or len(state) != len(canonical) or state[1] not in ("<", ">", "|", "=") \
                or list(state[:1]) + list(state[2:]) != canonical[:1] + canonical[2:]:
            raise pickle.UnpicklingError(f"holds a numpy dtype {self.name!r} in a forged state")
        byteorder = state[1] if state[1] in "<>" else "="
        self.dtype = np.dtype(self.name).newbyteorder(byteorder)


class _Array:
    """Stands in for ``numpy.ndarray`` while unpickling: built by :func:`np.frombuffer` from the raw bytes
    once the shape, a :class:`_DType` and the byte count agree."""

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5:
            raise pickle.UnpicklingError("holds an array in an unknown layout")
        _, shape, dtype, fortran, raw = state
        if isinstance(raw, str):
            raw = raw.encode("latin1")
        if not (isinstance(shape, tuple) and len(shape) <= 4 and all(type(s) is int and s >= 0 for s in shape)
                and isinstance(dtype, _DType) and dtype.dtype is not None and isinstance(raw, bytes)):
            raise pickle.UnpicklingError("holds an array in an unknown layout")
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.dtype.itemsize:
            raise pickle.UnpicklingError(f"holds an array of shape {shape} with {len(raw)} bytes")
        self.array = np.frombuffer(raw, dtype=dtype.dtype).reshape(shape, order="F" if fortran else "C").copy()


_NDARRAY = object()  # what the file's ``numpy.ndarray`` becomes: only an argument of _reconstruct


def _reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("holds an array of an unknown class")
    return _Array()


def _scalar(dtype, raw):
    if not isinstance(dtype, _DType) or dtype.dtype is None or not isinstance(raw, (bytes, str)):
        raise pickle.UnpicklingError("holds a numpy scalar in an unknown layout")
    raw = raw.encode("latin1") if isinstance(raw, str) else raw
    if len(raw) != dtype.dtype.itemsize:
        raise pickle.UnpicklingError("holds a numpy scalar of the wrong size")
    return np.frombuffer(raw, dtype=dtype.dtype)[0]


def _latin1(text, encoding):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("holds an encoded string other than latin-1")
    return text.encode("latin1")


class _BatchUnpickler(pickle.Unpickler):
    """Only what CIFAR's batches hold: dicts, lists, bytes, strings, numbers and integer arrays, each array
    rebuilt by peerlearn from its raw bytes (numpy's own unpickling functions are never called)."""

    SAFE = {("numpy.core.multiarray", "_reconstruct"): _reconstruct, ("numpy._core.multiarray", "_reconstruct"):
            _reconstruct, ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _DType,
            ("numpy.core.multiarray", "scalar"): _scalar, ("numpy._core.multiarray", "scalar"): _scalar,
            ("_codecs", "encode"): _latin1}

    def find_class(self, module: str, name: str):
        if (module, name) in self.SAFE:
            return self.SAFE[(module, name)]
        raise pickle.UnpicklingError(f"holds a {module}.{name}, which a CIFAR batch never does")


def _arrays(obj):
    """The unpickled batch with every stand-in replaced by its array (refusing any left half-built)."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise pickle.UnpicklingError("holds an array without its data")
        return obj.array
    if isinstance(obj, (_DType, _Array)) or obj is _NDARRAY:
        raise pickle.UnpicklingError("holds a numpy type where data belongs")
    if isinstance(obj, dict):
        return {k: _arrays(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_arrays(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_arrays(v) for v in obj)
    return obj


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _arrays(_BatchUnpickler(f, encoding="bytes").load())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as err:
        raise ValueError(f"data.path: {path} is not a CIFAR python batch ({str(err).splitlines()[0] or type(err).__name__})") \
            from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ValueError(f"data.path: {path} is not a CIFAR python batch (needs b'data' and {label_key!r})")
    x, y = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise ValueError(f"data.path: {path}: b'data' must be N x 3072 bytes (32x32 RGB), got {x.dtype} {x.shape}")
    if len(y) != len(x):
        raise ValueError(f"data.path: {path}: {len(x)} images but {len(y)} labels")
    return x.reshape(-1, 3, 32, 32), y


def normalise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both scaled by the training images' per-channel mean and std (axis 1 is the channel)."""
    axes = (0, *range(2, x_train.ndim))
    mean = x_train.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = x_train.std(axis=axes, keepdims=True, dtype=np.float64) + 1e-8
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def load_cifar(kind: str, path: str | None, image: bool = True) -> Dataset:
    """CIFAR-10 (``kind="cifar10"``) or CIFAR-100 from the extracted python batches in ``path``."""
    folder_name, train_files, test_files, label_key, classes = _CIFAR[kind]
    if not path:
        raise ValueError(f"data.path: dataset '{kind}' needs the extracted {folder_name} folder")
    root = Path(path).expanduser()
    if (root / folder_name).is_dir():  # the folder that holds it is fine too
        root = root / folder_name
    missing = [f for f in train_files + test_files if not (root / f).is_file()]
    if missing:
        raise ValueError(f"data.path: {root} has no {', '.join(missing)} (the {folder_name} files); extract the "
                         f"python version of {kind} there")
    x_tr, y_tr = (np.concatenate(a) for a in zip(*(_read_batch(root / f, label_key) for f in train_files)))
    x_te, y_te = (np.concatenate(a) for a in zip(*(_read_batch(root / f, label_key) for f in test_files)))
    x_tr, x_te = normalise(x_tr / np.float32(255), x_te / np.float32(255))
    if not image:
        x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    return from_arrays(kind, x_tr, y_tr, x_te, y_te, num_classes=classes)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_images(folders: list[Path], classes: list[str], channels: int, resize: tuple[int, int] | None,
                 size: tuple[int, int] | None = None):
    """Images, labels and their (height, width): resized to ``resize`` when given, else all of ``size`` (or of
    the first image's size when that is None too)."""
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB"}[channels]
    size = resize or size
    xs, ys = [], []
    for folder in folders:
        label = classes.index(folder.name)
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(path) as img:
                    img = img.convert(mode)
                    if resize is not None and img.size != (resize[1], resize[0]):
                        img = img.resize((resize[1], resize[0]), Image.BILINEAR)
                    pixels = np.asarray(img, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as err:
                raise ValueError(f"data.path: {path} is not a readable image ({str(err).splitlines()[0]})") from None
            if size is None:
                size = pixels.shape[:2]
            elif pixels.shape[:2] != tuple(size):
                raise ValueError(f"data.path: {path} is {pixels.shape[1]}x{pixels.shape[0]}, the others "
                                 f"{size[1]}x{size[0]}; set data.image_size to resize them all")
            xs.append(pixels.reshape(*pixels.shape[:2], channels).transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise ValueError(f"data.path: no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, folders[:3]))}")
    return np.stack(xs), np.asarray(ys, dtype=np.int64), size


def load_image_folder(path: str | None, channels: int = 3, image_size: int | None = None, seed: int = 0,
                      test_fraction: float = 0.2, image: bool = True) -> Dataset:
    """A folder of class subfolders (``train/`` and ``test/`` of them, or only them, then split seeded)."""
    from peerlearn.data.datasets import _split

    if not path:
        raise ValueError("data.path: dataset 'image_folder' needs a folder of class subfolders")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"data.path: {root} is not a folder")
    size = None if image_size is None else (image_size, image_size)
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = [p.name for p in _class_folders(root / "train")]
        extra = sorted({p.name for p in _class_folders(root / "test")} - set(classes))
        if extra:
            raise ValueError(f"data.path: {root / 'test'} has classes that train/ lacks: {', '.join(extra[:5])}")
        x_tr, y_tr, size = _read_images(_class_folders(root / "train"), classes, channels, size)
        x_te, y_te, _ = _read_images(_class_folders(root / "test"), classes, channels, size if image_size else None,
                                     size)
    else:
        folders = _class_folders(root)
        classes = [p.name for p in folders]
        if len(classes) < 2:
            raise ValueError(f"data.path: {root} needs at least two class subfolders (or train/ and test/ of them)")
        x, y, size = _read_images(folders, classes, channels, size)
        x_tr, y_tr, x_te, y_te = _split(x, y, test_fraction, seed)
    x_tr, x_te = normalise(x_tr / np.float32(255), x_te / np.float32(255))
    if not image:
        x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    return from_arrays(f"image_folder:{root.name}", x_tr, y_tr, x_te, y_te, num_classes=len(classes))


class _CifarSpec(FileDatasetSpec):
    path: str | None = Field(None, description="the extracted python-version folder (cifar-10-batches-py or "
                                               "cifar-100-python), or the folder holding it")
    needs: ClassVar[str] = "the folder of its python batches"

    def build(self, ctx):
        return load_cifar(self.name, self.path, image=ctx.image_inputs)


@DATASETS.register
class Cifar10Spec(_CifarSpec):
    """CIFAR-10 from the python batches on disk (Krizhevsky, 2009): 10 classes of 32x32 colour images."""

    name: Literal["cifar10"] = "cifar10"


@DATASETS.register
class Cifar100Spec(_CifarSpec):
    """CIFAR-100 from the python batches on disk (Krizhevsky, 2009): 100 fine classes."""

    name: Literal["cifar100"] = "cifar100"


@DATASETS.register
class ImageFolderSpec(FileDatasetSpec):
    """Any image dataset as class subfolders (train/ and test/, or split here)."""

    name: Literal["image_folder"] = "image_folder"
    path: str | None = Field(None, description="folder of class subfolders, or of train/ and test/ of them")
    channels: Literal[1, 3] = Field(3, description="1: grey, 3: RGB")
    image_size: int | None = Field(None, ge=4, le=1024, description="resize every image to this square size "
                                                                     "(default: keep; all must then match)")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="test share when there is no test/ folder")
    needs: ClassVar[str] = "a folder of class subfolders"

    def build(self, ctx):
        return load_image_folder(self.path, self.channels, self.image_size, ctx.run_seed, self.test_fraction,
                                 image=ctx.image_inputs)
