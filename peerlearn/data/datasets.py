"""One loader per dataset, all offline: bundled with an installed package, generated, or local files.

Every loader returns a :class:`Dataset` of float32 inputs and int64 labels with a fixed
train/test split. Nothing here downloads: a dataset that is missing fails with a message
naming the local-file route.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
import numpy as np

from peerlearn.data.base import Dataset, _labels, from_arrays

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # where dataset-fashion-mnist puts the files
FASHION_MNIST_DIRS = (DEBIAN_FASHION_MNIST,)


def _make(name: str, x_tr, y_tr, x_te, y_te, num_classes: int | None = None) -> Dataset:
    return from_arrays(name, np.asarray(x_tr, dtype=np.float32), y_tr, np.asarray(x_te, dtype=np.float32), y_te,
                       num_classes)


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    """Seeded and stratified, as scikit-learn's ``train_test_split(stratify=y)`` (:mod:`peerlearn.data.split`)."""
    from peerlearn.data.split import split_arrays

    return split_arrays(x, y, test_fraction, seed)


def _digits_file() -> Path:
    """scikit-learn's bundled ``digits.csv.gz``, found without importing scikit-learn (0.9 s)."""
    import importlib.util

    found = importlib.util.find_spec("sklearn")
    if found is None or not found.submodule_search_locations:
        raise ValueError("data.dataset digits: scikit-learn is not installed (pip install scikit-learn)")
    return Path(next(iter(found.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


def load_digits(seed: int = 0, test_fraction: float = 0.2, image: bool = False) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), scaled to [0, 1].

    References:
        Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI ML Repository, 1998.
    """
    with gzip.open(_digits_file(), "rt") as f:  # what sklearn.datasets.load_digits reads
        data = np.loadtxt(f, delimiter=",")
    x, target = data[:, :-1].astype(np.float32) / 16.0, data[:, -1].astype(int)
    if image:
        x = x.reshape(-1, 1, 8, 8)
    return _make("digits", *_split(x, target, test_fraction, seed), num_classes=10)


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(path: str | None = None, image: bool = False) -> Dataset:
    """Fashion-MNIST (60,000 + 10,000 grey 28x28 images, 10 classes) from local IDX files.

    Looks in ``path`` if given, else in ``$PEERLEARN_FASHION_MNIST``, else where Debian's
    ``dataset-fashion-mnist`` package puts them (``/usr/share/datasets/fashion-mnist``).

    References:
        Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
        Learning Algorithms", arXiv:1708.07747, 2017.
    """
    candidates = [path] if path else fashion_mnist_dirs()
    folder = fashion_mnist_folder(candidates)
    if folder is not None:
        xtr, ytr, xte, yte = (_read_idx(_find_idx(folder, s)) for s in FASHION_MNIST_STEMS)
        shape = (-1, 1, 28, 28) if image else (-1, 28 * 28)
        return _make("fashion_mnist", (xtr / 255.0).reshape(shape), ytr, (xte / 255.0).reshape(shape), yte, 10)
    raise ValueError(
        f"data.dataset=fashion_mnist: no IDX files ({FASHION_MNIST_STEMS[0]}[.gz] and the other three) found in "
        f"{', '.join(candidates)}. Get them with `peerlearn data install fashion-mnist`, or set data.path to a "
        "folder holding them")


FASHION_MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")


def fashion_mnist_dirs() -> list[str]:
    """Where Fashion-MNIST is looked for: ``$PEERLEARN_FASHION_MNIST``, then Debian's folder."""
    return [d for d in (os.environ.get("PEERLEARN_FASHION_MNIST"), *FASHION_MNIST_DIRS) if d]


def fashion_mnist_folder(candidates: list[str] | None = None) -> Path | None:
    """The first folder of ``candidates`` (default :func:`fashion_mnist_dirs`) holding the four IDX files."""
    for folder in candidates if candidates is not None else fashion_mnist_dirs():
        if all(_find_idx(Path(folder), s) for s in FASHION_MNIST_STEMS):
            return Path(folder)
    return None


def load_mnist1d(seed: int = 0, num_samples: int = 5000) -> Dataset:
    """MNIST-1D: 1-D signals of length 40 in 10 classes, generated procedurally (no download).

    Uses ``mnist1d.data.make_dataset`` (never ``get_dataset``, which may download).

    References:
        Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ValueError("data.dataset=mnist1d needs the optional package: pip install 'peerlearn[mnist1d]'") from None
    args = get_dataset_args()
    args.seed, args.num_samples = seed, num_samples
    saved = np.random.get_state()  # make_dataset seeds numpy's global generator
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(saved)
    return _make("mnist1d", d["x"], d["y"], d["x_test"], d["y_test"], 10)


def load_synthetic(seed: int = 0, num_samples: int = 4000, num_features: int = 20, num_classes: int = 4,
                   noise: float = 0.5, test_fraction: float = 0.2) -> Dataset:
    """Multinomial logistic data with planted weights: ``y ~ softmax(x @ W* / noise)``, ``x ~ N(0, I)``.

    The planted ``W*`` (num_features x num_classes) is the Bayes-optimal linear classifier, so
    logistic regression has a known target.
    """
    rng = np.random.default_rng(seed)
    w_star = rng.normal(size=(num_features, num_classes))
    x = rng.normal(size=(num_samples, num_features))
    logits = x @ w_star / max(noise, 1e-6)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random((num_samples, 1))).argmax(1)
    n_test = int(round(num_samples * test_fraction))
    return _make("synthetic", x[n_test:], y[n_test:], x[:n_test], y[:n_test], num_classes)


def load_npz(path: str | None, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """A local NumPy ``.npz`` with ``x_train, y_train, x_test, y_test`` (or ``x, y``, split here)."""
    if not path or not Path(path).is_file():
        raise ValueError(f"data.path: dataset 'npz' needs an existing .npz file, got {path!r}")
    try:
        f = np.load(path, allow_pickle=False)
        keys = set(f.files)
    except Exception as err:  # not a zip, not numpy's format, pickled objects ...
        raise ValueError(f"data.path: {path} is not a readable .npz file ({type(err).__name__})") from None
    with f:
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            parts = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
        elif {"x", "y"} <= keys:
            x, y = f["x"], f["y"]
            if len(x) != len(y):
                raise ValueError(f"data.dataset npz: x has {len(x)} samples but y has {len(y)} labels ({path})")
            parts = _split(x, _labels(y, "y", "data.dataset npz"), test_fraction, seed)
        else:
            raise ValueError(f"data.path: {path} must hold arrays x_train, y_train, x_test, y_test "
                             f"(or x, y); it holds {sorted(keys)}")
    return from_arrays(Path(path).stem, *parts)


# ---------------------------------------------------------------------------------------------
# Specs (data.dataset)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.data.base import DATASETS, DatasetSpec, FileDatasetSpec  # noqa: E402


def _wants_images(ctx) -> bool:
    return ctx.image_inputs


@DATASETS.register
class DigitsSpec(DatasetSpec):
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes)."""

    name: Literal["digits"] = "digits"

    @classmethod
    def availability(cls) -> tuple[str, str]:
        return "ready", "bundled with scikit-learn"

    def build(self, ctx):
        return load_digits(seed=ctx.run_seed, image=_wants_images(ctx))


@DATASETS.register
class FashionMnistSpec(DatasetSpec):
    """Fashion-MNIST from local IDX files (Debian's dataset-fashion-mnist)."""

    name: Literal["fashion_mnist"] = "fashion_mnist"
    path: str | None = Field(None, description="folder of the IDX files (default: $PEERLEARN_FASHION_MNIST, else "
                                                "Debian's location)")

    @classmethod
    def availability(cls) -> tuple[str, str]:
        found = fashion_mnist_folder()
        if found is not None:
            return "installed", str(found)
        return "missing", ("peerlearn data install fashion-mnist (Debian's dataset-fashion-mnist), or the four IDX "
                           "files in $PEERLEARN_FASHION_MNIST or data.path")

    def build(self, ctx):
        return load_fashion_mnist(path=self.path, image=_wants_images(ctx))


@DATASETS.register
class Mnist1dSpec(DatasetSpec):
    """MNIST-1D, generated (Greydanus, 2020; the optional mnist1d package)."""

    name: Literal["mnist1d"] = "mnist1d"
    num_samples: int | None = Field(None, ge=10, description="samples to generate (default 5000)")

    @classmethod
    def availability(cls) -> tuple[str, str]:
        import importlib.util

        if importlib.util.find_spec("mnist1d") is None:
            return "missing", "pip install 'peerlearn[mnist1d]' (the generator; nothing is downloaded)"
        return "ready", "generated by the mnist1d package"

    def build(self, ctx):
        from peerlearn.resources import check_fits

        n = self.num_samples or 5000
        check_fits(2048.0 * n, f"{n:,} generated samples (about 1.7 KB each at the generator's peak)",
                   "data.num_samples")
        extra = {} if self.num_samples is None else {"num_samples": self.num_samples}
        return load_mnist1d(seed=ctx.run_seed, **extra)


@DATASETS.register
class SyntheticSpec(DatasetSpec):
    """Multinomial logistic data with planted weights (a known linear target)."""

    name: Literal["synthetic"] = "synthetic"
    num_samples: int | None = Field(None, ge=10, description="samples to generate (default 4000)")
    num_features: int = Field(20, ge=1, description="input dimension")
    num_classes: int = Field(4, ge=2, description="classes")
    noise: float = Field(0.5, gt=0.0, description="label noise temperature")

    @classmethod
    def availability(cls) -> tuple[str, str]:
        return "ready", "generated"

    def build(self, ctx):
        from peerlearn.resources import check_fits

        n = self.num_samples or 4000
        check_fits(3 * 8.0 * n * self.num_features, f"{n:,} samples x {self.num_features:,} features", "data.num_features")
        extra = {} if self.num_samples is None else {"num_samples": self.num_samples}
        return load_synthetic(seed=ctx.run_seed, num_features=self.num_features, num_classes=self.num_classes,
                              noise=self.noise, **extra)


@DATASETS.register
class NpzSpec(FileDatasetSpec):
    """A user's .npz file of x_train, y_train, x_test, y_test (or x, y, split here)."""

    name: Literal["npz"] = "npz"
    path: str | None = Field(None, description=".npz file")
    needs: ClassVar[str] = "the path of a .npz file"

    def build(self, ctx):
        return load_npz(self.path, seed=ctx.run_seed)
