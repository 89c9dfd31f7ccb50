"""Datasets read from the files users have: LEAF JSON (FEMNIST, Shakespeare), CIFAR-10/100 python batches,
ImageFolder trees. Every test writes the files in exactly those formats, a few users or images each."""

import json
import pickle
import socket

import numpy as np
import pytest
import torch

from peerlearn.build import build
from peerlearn.config import ConfigError
from peerlearn.data.images import load_cifar, load_image_folder
from peerlearn.data.leaf import load_leaf
from peerlearn.data.shakespeare import VOCAB
from peerlearn.engines import simulate
from tests.conftest import tiny_config


def _leaf_file(path, users: dict, counts=True):
    blob = {"users": list(users), "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()}}
    if counts:
        blob["num_samples"] = [len(y) for _, y in users.values()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(blob))


def _femnist(root, rng, users=("f0", "f1", "f2", "f3"), n_train=8, n_test=3):
    def samples(n, label):  # each user writes mostly one class: bright pixels in its own block
        x = rng.random((n, 784)) * 0.1
        x[:, label * 50:(label + 1) * 50] += 0.9
        return x.round(3).tolist(), [label] * n

    data = {u: (samples(n_train, k), samples(n_test, k)) for k, u in enumerate(users)}
    half = len(users) // 2  # two files per split: LEAF writes several
    for split, i in (("train", 0), ("test", 1)):
        _leaf_file(root / split / "part_a.json", {u: data[u][i] for u in users[:half]})
        _leaf_file(root / split / "part_b.json", {u: data[u][i] for u in users[half:]})
    return data


def test_leaf_femnist_reads_users_as_groups_with_their_own_test_data(tmp_path):
    data = _femnist(tmp_path, np.random.default_rng(0))
    ds = load_leaf(str(tmp_path))
    assert ds.name == "leaf-femnist" and ds.num_classes == 62 and ds.input_shape == (784,)
    assert ds.group_names == ["f0", "f1", "f2", "f3"]
    trainable = ds.groups >= 0
    assert int(trainable.sum()) == 32 and len(ds.y_test) == 12
    for k, user in enumerate(ds.group_names):
        rows = np.flatnonzero(ds.groups == k)
        (x_tr, y_tr), (x_te, y_te) = data[user]
        assert torch.equal(ds.x_train[rows], torch.tensor(x_tr, dtype=torch.float32))
        own = np.flatnonzero(ds.local_groups == k)  # the user's own test samples, never trained on
        assert torch.equal(ds.x_train[own], torch.tensor(x_te, dtype=torch.float32))
        assert (ds.groups[own] == -1).all() and ds.y_train[own].tolist() == y_te
    assert load_leaf(str(tmp_path), image=True).input_shape == (1, 28, 28)


def test_leaf_natural_partition_runs_with_local_test_splits(tmp_path):
    _femnist(tmp_path, np.random.default_rng(1))
    cfg = tiny_config(num_nodes=4, num_rounds=3, eval_every=3, data={"dataset": "leaf", "path": str(tmp_path),
                                                                      "partition": "natural"})
    built = build(cfg)
    ds = built.dataset
    for part, test in zip(built.parts, built.local_test_parts):  # a node's local test = its user's test data
        user = set(ds.groups[part].tolist())
        assert len(user) == 1 and set(ds.local_groups[test].tolist()) == user and len(test) == 3
    rows = simulate(built)
    assert 0.0 <= rows[-1]["acc_local_mean"] <= 1.0 and not np.isnan(rows[-1]["acc_mean"])


def test_leaf_shakespeare_becomes_character_tokens(tmp_path):
    train = {"ROMEO": (["but soft!", "what ligh"], ["t", "t"]), "JULIET": (["o romeo é", "wherefore"], [" ", " "])}
    test = {"ROMEO": (["through y"], ["o"])}
    _leaf_file(tmp_path / "train" / "all.json", train)
    _leaf_file(tmp_path / "test" / "all.json", test, counts=False)
    ds = load_leaf(str(tmp_path))
    assert ds.name == "leaf-shakespeare" and not ds.x_train.is_floating_point() and ds.num_classes == len(VOCAB)
    decode = lambda row: "".join(VOCAB[i] for i in row.tolist())  # noqa: E731
    assert decode(ds.x_train[0]) == "but soft!" and decode(ds.x_train[2]) == "o romeo  "  # é -> space
    assert VOCAB[int(ds.y_train[0])] == "t" and decode(ds.x_test[0]) == "through y"
    assert ds.groups.tolist() == [0, 0, 1, 1, -1] and ds.local_groups.tolist() == [-1, -1, -1, -1, 0]


@pytest.mark.parametrize("break_it, message", [
    (lambda p: p.write_text("{not json"), "is not JSON"),
    (lambda p: p.write_text(json.dumps({"users": ["a"]})), "is not a LEAF file"),
    (lambda p: p.write_text(json.dumps({"users": ["a"], "num_samples": [3],
                                        "user_data": {"a": {"x": [[0.0] * 784], "y": [1]}}})), "num_samples says 3"),
    (lambda p: p.write_text(json.dumps({"users": ["a"], "user_data": {"a": {"x": [[0.0] * 784] * 2, "y": [1]}}})),
     "2 inputs but 1 labels"),
    (lambda p: p.write_text(json.dumps({"users": ["a"], "user_data": {"a": {"x": [[0.0] * 10], "y": [1]}}})),
     "unrecognised LEAF samples"),
    (lambda p: p.write_text(json.dumps({"users": ["a"], "user_data": {"a": {"x": [[0.0] * 784], "y": [70]}}})),
     "0..61"),
])
def test_malformed_leaf_files_are_one_line_naming_the_file(tmp_path, break_it, message):
    _femnist(tmp_path, np.random.default_rng(2))
    bad = tmp_path / "train" / "part_b.json"
    break_it(bad)
    with pytest.raises(ValueError, match=message) as err:
        load_leaf(str(tmp_path))
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    cfg = tiny_config(num_nodes=2, data={"dataset": "leaf", "path": str(tmp_path), "partition": "natural"})
    with pytest.raises(ConfigError, match="config error: data.path"):
        build(cfg)


def _cifar(root, rng, kind="cifar10", per_batch=6):
    label_key, files = (b"labels", [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]) if kind == "cifar10" \
        else (b"fine_labels", ["train", "test"])
    classes = 10 if kind == "cifar10" else 100
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in files:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, classes, per_batch).tolist()
        batch = {b"batch_label": b"training batch", label_key: y, b"data": x, b"filenames": [b"x.png"] * per_batch}
        if kind == "cifar100":
            batch[b"coarse_labels"] = [v // 5 for v in y]
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)  # the original batches are protocol-2 pickles
        written[name] = (x, y)
    return written


@pytest.mark.parametrize("kind, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_batches_load_normalised(tmp_path, kind, folder):
    written = _cifar(tmp_path / folder, np.random.default_rng(3), kind)
    ds = load_cifar(kind, str(tmp_path))  # the folder holding the extracted one works too
    train_files = [f for f in written if f not in ("test_batch", "test")]
    n_train = 6 * len(train_files)
    assert ds.input_shape == (3, 32, 32) and len(ds.y_train) == n_train and len(ds.y_test) == 6
    assert ds.num_classes == (10 if kind == "cifar10" else 100)
    assert ds.y_train.tolist() == [v for f in train_files for v in written[f][1]]
    per_channel = ds.x_train.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(3), atol=1e-4)
    # pixel (channel 0, row 0, col 1) of the first training image, undone from the normalisation
    raw = written[train_files[0]][0].reshape(-1, 3, 32, 32).astype(np.float64) / 255
    all_raw = np.concatenate([written[f][0] for f in train_files]).reshape(-1, 3, 32, 32) / 255
    mean, std = all_raw[:, 0].mean(), all_raw[:, 0].std()
    assert float(ds.x_train[0, 0, 0, 1]) == pytest.approx((raw[0, 0, 0, 1] - mean) / (std + 1e-8), rel=1e-5)
    assert load_cifar(kind, str(tmp_path / folder), image=False).input_shape == (3072,)


def test_cifar_refuses_missing_broken_and_foreign_pickles(tmp_path):
    with pytest.raises(ValueError, match="data_batch_1"):
        load_cifar("cifar10", str(tmp_path))
    _cifar(tmp_path, np.random.default_rng(4))
    (tmp_path / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="data_batch_3 is not a CIFAR python batch"):
        load_cifar("cifar10", str(tmp_path))

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match=r"holds a (io|builtins)\.open, which a CIFAR batch never does"):
        load_cifar("cifar10", str(tmp_path))
    assert not (tmp_path / "pwned").exists()  # the foreign pickle ran nothing
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match="N x 3072"):
        load_cifar("cifar10", str(tmp_path))


def _png(path, size, colour):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_image_folder_reads_class_folders(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for k in range(n):
            _png(tmp_path / split / "cat" / f"{k}.png", (12, 10), (200, 10 * k, 0))
            _png(tmp_path / split / "dog" / f"{k}.jpg", (12, 10), (0, 10 * k, 200))
    ds = load_image_folder(str(tmp_path))
    assert ds.input_shape == (3, 10, 12) and ds.num_classes == 2 and len(ds.y_train) == 8 and len(ds.y_test) == 4
    assert ds.y_train.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # sorted class folders: cat 0, dog 1
    assert float(ds.x_train[:4, 0].mean()) > 0 > float(ds.x_train[4:, 0].mean())  # red cats, blue dogs
    grey = load_image_folder(str(tmp_path), channels=1, image_size=8)
    assert grey.input_shape == (1, 8, 8)
    _png(tmp_path / "train" / "dog" / "big.png", (20, 20), (0, 0, 0))
    with pytest.raises(ValueError, match="big.png is 20x20, the others 12x10; set data.image_size"):
        load_image_folder(str(tmp_path))
    assert load_image_folder(str(tmp_path), image_size=16).input_shape == (3, 16, 16)
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png is not a readable image"):
        load_image_folder(str(tmp_path), image_size=16)


def test_image_folder_without_a_test_folder_is_split_seeded(tmp_path):
    for label, colour in (("a", (255, 0, 0)), ("b", (0, 255, 0)), ("c", (0, 0, 255))):
        for k in range(10):
            _png(tmp_path / label / f"{k}.bmp", (6, 6), colour)
    ds = load_image_folder(str(tmp_path), seed=0, test_fraction=0.3)
    assert len(ds.y_train) == 21 and len(ds.y_test) == 9 and sorted(set(ds.y_test.tolist())) == [0, 1, 2]
    again = load_image_folder(str(tmp_path), seed=0, test_fraction=0.3)
    assert torch.equal(ds.x_test, again.x_test)


def test_the_file_datasets_never_touch_the_network(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset loader opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    _femnist(tmp_path / "leaf", np.random.default_rng(5))
    _cifar(tmp_path / "cifar", np.random.default_rng(5))
    for k in range(5):
        for label in ("x", "y"):
            _png(tmp_path / "images" / label / f"{k}.png", (4, 4), (k, 0, 0))
    for data in ({"dataset": "leaf", "path": str(tmp_path / "leaf"), "partition": "natural"},
                 {"dataset": "cifar10", "path": str(tmp_path / "cifar")},
                 {"dataset": "image_folder", "path": str(tmp_path / "images"), "test_fraction": 0.2}):
        cfg = tiny_config(num_nodes=2, num_rounds=1, eval_every=1, data=data,
                          algorithm={"name": "dsgd", "lr": 0.1, "batch_size": 2})
        assert len(simulate(build(cfg))) == 2


def test_image_folder_test_images_must_match_the_training_size(tmp_path):
    for split in ("train", "test"):
        for label in ("a", "b"):
            _png(tmp_path / split / label / "0.png", (8, 8), (1, 2, 3))
    _png(tmp_path / "test" / "a" / "odd.png", (9, 8), (1, 2, 3))
    with pytest.raises(ValueError, match="odd.png is 9x8, the others 8x8"):
        load_image_folder(str(tmp_path))
    assert load_image_folder(str(tmp_path), image_size=8).input_shape == (3, 8, 8)


def test_crop_flip_gives_shifted_or_mirrored_windows_and_is_seeded():
    from peerlearn.data.batching import NodeSampler

    n, c, h, w, p = 3, 2, 5, 6, 2
    x = torch.arange(10 * c * h * w, dtype=torch.float32).reshape(10, c, h, w) + 1  # every pixel unique, none 0
    y = torch.arange(10)
    parts = [np.arange(0, 4), np.arange(4, 7), np.arange(7, 10)]
    a = NodeSampler(x, y, parts, 8, seed=1, crop_padding=p)
    b = NodeSampler(x, y, parts, 8, seed=1, crop_padding=p)
    seen_flip = seen_shift = False
    for _ in range(3):
        xa, ya = a.next()
        xb, _ = b.next()
        assert torch.equal(xa, xb) and xa.shape == (n, 8, c, h, w)
        for i in range(n):
            for j in range(8):
                padded = torch.nn.functional.pad(x[int(ya[i, j])], (p, p, p, p))
                windows = [(padded[:, dy:dy + h, dx:dx + w], f) for dy in range(2 * p + 1)
                           for dx in range(2 * p + 1) for f in (False, True)]
                match = [(win.flip(-1) if f else win, f, k) for k, (win, f) in enumerate(windows)
                         if torch.equal(win.flip(-1) if f else win, xa[i, j])]
                assert match, (i, j)  # each sample is a window of its own padded image, maybe mirrored
                seen_flip |= any(f for _, f, _ in match)
                seen_shift |= not torch.equal(xa[i, j], x[int(ya[i, j])])
    assert seen_flip and seen_shift
    rows = torch.tensor([2, 0])  # drawing for some nodes leaves the others' stream as it is
    a.next(rows)
    b.next()
    assert torch.equal(a.next()[0], b.next()[0])


def test_augment_needs_images_and_runs_seeded():
    with pytest.raises(ConfigError, match="data.augment: crop_flip transforms images"):
        build(tiny_config(data={"dataset": "digits", "augment": "crop_flip"}))
    cfg = tiny_config(num_rounds=4, eval_every=2, data={"dataset": "digits", "augment": "crop_flip", "crop_padding": 1},
                      model={"name": "cnn", "channels": [2, 4]})
    first, second = simulate(build(cfg)), simulate(build(cfg))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]  # noqa: E731
    assert repr(strip(first)) == repr(strip(second))
    plain = simulate(build(tiny_config(num_rounds=4, eval_every=2, data={"dataset": "digits"},
                                       model={"name": "cnn", "channels": [2, 4]})))
    assert strip(plain)[-1]["loss_mean"] != strip(first)[-1]["loss_mean"]
