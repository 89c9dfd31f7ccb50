"""The data people already have (issue 39): a torch Dataset class of the user's, and a Hugging Face dataset
saved with save_to_disk, train batched and give exactly the rows of the same arrays loaded from an .npz file."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from peerlearn.build import build
from peerlearn.config import ConfigError, load_config
from peerlearn.engines import simulate

RNG = np.random.default_rng(0)
X_TRAIN, Y_TRAIN = RNG.normal(size=(240, 6)).astype(np.float32), RNG.integers(0, 3, 240)
X_TEST, Y_TEST = RNG.normal(size=(60, 6)).astype(np.float32), RNG.integers(0, 3, 60)
BASE = {"seed": 0, "num_nodes": 8, "num_rounds": 4, "eval_every": 2, "model": {"name": "mlp", "hidden": [8]},
        "algorithm": {"name": "dsgd", "lr": 0.1, "batch_size": 8}}

PLUGIN = '''
import torch
from torch.utils.data import Dataset


class Pairs(Dataset):
    """A user's own Dataset: items are (tensor, int)."""

    def __init__(self, x, y):
        self.x, self.y = torch.as_tensor(x), [int(v) for v in y]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def make(path, train=True):
    import numpy as np

    f = np.load(path)
    return Pairs(f["x_train"], f["y_train"]) if train else Pairs(f["x_test"], f["y_test"])


def make_both(path):
    return make(path, True), make(path, False)
'''


def _rows(tmp_path, data: dict, plugins: list | None = None):
    path = tmp_path / f"c{len(list(tmp_path.glob('c*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({**BASE, "data": {"partition": "iid", **data}, "plugins": plugins or []}))
    return simulate(build(load_config(path)))


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, x_train=X_TRAIN, y_train=Y_TRAIN, x_test=X_TEST, y_test=Y_TEST)
    (tmp_path / "my_data.py").write_text(PLUGIN)
    return path


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra.keys() - {"wall_time_s", "eval_time_s"}:  # NaN: not measured, in both
            assert ra[k] == rb[k] or (ra[k] != ra[k] and rb[k] != rb[k]), (k, ra[k], rb[k])


def test_a_users_torch_dataset_equals_the_same_arrays_as_npz(tmp_path, npz):
    reference = _rows(tmp_path, {"dataset": "npz", "path": str(npz)})
    _same(reference, _rows(tmp_path, {"dataset": "torch", "factory": "my_data.py:make_both",
                                      "factory_kwargs": {"path": str(npz)}}, ["my_data.py"]))
    # torchvision's way: one class, called again with the test split's keyword
    _same(reference, _rows(tmp_path, {"dataset": "torch", "factory": "my_data.py:make", "factory_kwargs": {"path": str(npz)},
                                      "test_kwargs": {"train": False}}, ["my_data.py"]))


def test_a_factory_outside_the_plugins_is_refused_before_any_import(tmp_path, npz):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, "data": {"dataset": "torch", "factory": "os:system",
                                                     "factory_kwargs": {"command": "touch pwned"}}}))
    with pytest.raises(ConfigError, match=r"^config error: data.factory: os is not among the config's plugins"):
        load_config(path)
    path.write_text(yaml.safe_dump({**BASE, "data": {"dataset": "torch", "factory": "make"}}))
    with pytest.raises(ConfigError, match="data.factory: expected module:callable"):
        load_config(path)
    assert not (tmp_path / "pwned").exists()


def test_a_hugging_face_dataset_saved_to_disk_equals_the_same_arrays_as_npz(tmp_path, npz):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "hf"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"x": X_TRAIN.tolist(), "label": Y_TRAIN.tolist()}),
        "test": datasets.Dataset.from_dict({"x": X_TEST.tolist(), "label": Y_TEST.tolist()}),
    }).save_to_disk(str(folder))
    _same(_rows(tmp_path, {"dataset": "npz", "path": str(npz)}),
          _rows(tmp_path, {"dataset": "hf_disk", "path": str(folder)}))
    with pytest.raises(ValueError, match=r"data.x_column: no column 'pixels'"):
        _rows(tmp_path, {"dataset": "hf_disk", "path": str(folder), "x_column": "pixels"})


def test_one_split_is_split_as_an_npz_of_x_and_y_is(tmp_path):
    datasets = pytest.importorskip("datasets")
    x, y = np.concatenate([X_TRAIN, X_TEST]), np.concatenate([Y_TRAIN, Y_TEST])
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    datasets.Dataset.from_dict({"x": x.tolist(), "label": y.tolist()}).save_to_disk(str(tmp_path / "one"))
    _same(_rows(tmp_path, {"dataset": "npz", "path": str(tmp_path / "xy.npz")}),
          _rows(tmp_path, {"dataset": "hf_disk", "path": str(tmp_path / "one")}))


def test_uint8_images_are_scaled_like_the_built_in_image_datasets():
    from peerlearn.data.adapters import materialise

    class Images:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return np.full((1, 2, 2), 51 * i, dtype=np.uint8), i % 2

    x, y = materialise(Images(), "test")
    assert x.dtype == np.float32 and x.shape == (4, 1, 2, 2) and float(x.max()) == pytest.approx(153 / 255)
    assert y.tolist() == [0, 1, 0, 1]

    class Ragged(Images):
        def __getitem__(self, i):
            return np.zeros(i + 1, dtype=np.float32), 0

    with pytest.raises(ValueError, match="samples have different shapes"):
        materialise(Ragged(), "ragged")
