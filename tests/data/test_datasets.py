import gzip
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from peerlearn.data import datasets


def test_digits_shapes_and_range():
    d = datasets.load_digits(seed=0)
    assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1.0
    assert d.num_classes == 10 and set(d.y_test.tolist()) == set(range(10))
    assert datasets.load_digits(seed=0, image=True).input_shape == (1, 8, 8)


def test_synthetic_planted_model_is_learnable_and_seeded():
    a, b = datasets.load_synthetic(seed=3), datasets.load_synthetic(seed=3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    # labels depend on x through the planted linear map: a least-squares fit beats chance by far
    x, y = a.x_train.numpy(), np.eye(a.num_classes)[a.y_train.numpy()]
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    acc = (np.argmax(a.x_test.numpy() @ w, 1) == a.y_test.numpy()).mean()
    assert acc > 0.6  # chance is 0.25


def test_mnist1d_generates_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    import requests
    monkeypatch.setattr(requests, "get", no_network)
    state = np.random.get_state()[1].copy()
    d = datasets.load_mnist1d(seed=1, num_samples=500)
    assert d.x_train.shape == (400, 40) and d.x_test.shape == (100, 40) and d.num_classes == 10
    assert np.array_equal(np.random.get_state()[1], state)  # numpy's global RNG left alone


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files_from_a_user_folder(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(6, 28, 28))
    labels = np.array([0, 1, 2, 3, 4, 9])
    for stem, arr in [("train-images-idx3-ubyte", imgs), ("train-labels-idx1-ubyte", labels),
                      ("t10k-images-idx3-ubyte", imgs[:2]), ("t10k-labels-idx1-ubyte", labels[:2])]:
        _write_idx(tmp_path / f"{stem}.gz", arr)
    d = datasets.load_fashion_mnist(path=str(tmp_path))
    assert d.x_train.shape == (6, 784) and d.x_test.shape == (2, 784)
    assert torch.allclose(d.x_train[2], torch.tensor(imgs[2].reshape(-1) / 255.0, dtype=torch.float32))
    assert d.y_train.tolist() == labels.tolist()
    assert datasets.load_fashion_mnist(path=str(tmp_path), image=True).input_shape == (1, 28, 28)


def test_fashion_mnist_missing_folder_names_the_routes(tmp_path):
    with pytest.raises(ValueError, match="peerlearn data install fashion-mnist.*data.path"):
        datasets.load_fashion_mnist(path=str(tmp_path))


@pytest.mark.integration
@pytest.mark.skipif(not Path(datasets.FASHION_MNIST_DIRS[0]).is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package():
    d = datasets.load_fashion_mnist()
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert np.bincount(d.y_train.numpy()).tolist() == [6000] * 10


def test_npz_loader_both_layouts_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 3)), np.arange(50) % 5
    np.savez(tmp_path / "split.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    np.savez(tmp_path / "whole.npz", x=x, y=y)
    np.savez(tmp_path / "bad.npz", features=x)
    a = datasets.load_npz(str(tmp_path / "split.npz"))
    assert a.x_train.shape == (40, 3) and a.num_classes == 5
    b = datasets.load_npz(str(tmp_path / "whole.npz"), test_fraction=0.2)
    assert b.x_train.shape == (40, 3) and b.x_test.shape == (10, 3)
    with pytest.raises(ValueError, match="must hold arrays x_train"):
        datasets.load_npz(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="data.path"):
        datasets.load_npz(str(tmp_path / "nope.npz"))
