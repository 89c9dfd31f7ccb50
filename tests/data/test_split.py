"""peerlearn's stratified split draws exactly what scikit-learn's train_test_split(stratify=y) draws, so the
datasets it splits (and the goldens on them) did not change when scikit-learn left the start-up."""

from __future__ import annotations

import numpy as np
import pytest

from peerlearn.data.split import split_arrays, stratified_split


@pytest.mark.parametrize("labels", [
    np.repeat(np.arange(10), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]),  # digits' class counts
    np.repeat(np.arange(3), [5, 5, 5]),                                              # ties everywhere
    np.random.default_rng(1).integers(0, 7, 333),
    np.array([2, 0, 2, 1, 0, 1, 2, 2, 0, 1, 5, 5]),                                 # unsorted, gaps in labels
])
@pytest.mark.parametrize("fraction", [0.2, 0.25, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_the_split_equals_scikit_learns(labels, fraction, seed):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    if min(np.ceil(fraction * len(labels)), len(labels) - np.ceil(fraction * len(labels))) < len(np.unique(labels)):
        pytest.skip("too few samples for every class on both sides")
    want_train, want_test = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)
    train, test = stratified_split(labels, fraction, seed)
    assert train.tolist() == want_train.tolist() and test.tolist() == want_test.tolist()


def test_digits_read_without_scikit_learn_equal_its_loader():
    from sklearn.datasets import load_digits as sk_digits

    from peerlearn.data.datasets import load_digits

    bunch = sk_digits()
    x = bunch.data.astype(np.float32) / 16.0
    x_tr, y_tr, x_te, y_te = split_arrays(x, bunch.target, 0.2, 3)
    ds = load_digits(seed=3)
    assert np.array_equal(ds.x_train.numpy(), x_tr) and np.array_equal(ds.y_train.numpy(), y_tr)
    assert np.array_equal(ds.x_test.numpy(), x_te) and np.array_equal(ds.y_test.numpy(), y_te)


def test_a_class_of_one_sample_is_refused():
    with pytest.raises(ValueError, match="two samples of every class"):
        stratified_split(np.array([0, 0, 1, 1, 2]), 0.4, 0)


def test_train_samples_keeps_a_seeded_subset_of_the_training_set_and_the_whole_test_set():
    import torch

    from peerlearn.build import build_dataset
    from peerlearn.config import ConfigError
    from tests.conftest import tiny_config

    full = build_dataset(tiny_config())
    sub = build_dataset(tiny_config(data={"train_samples": 300}))
    assert len(sub.y_train) == 300 and torch.equal(sub.x_test, full.x_test)
    rows = {tuple(r.tolist()) for r in full.x_train}
    assert all(tuple(r.tolist()) in rows for r in sub.x_train)  # samples of the training set, not of the test set
    assert torch.equal(build_dataset(tiny_config(data={"train_samples": 300})).x_train, sub.x_train)  # seeded
    assert not torch.equal(build_dataset(tiny_config(seed=1, data={"train_samples": 300})).x_train, sub.x_train)
    with pytest.raises(ConfigError, match="^config error: data.train_samples: "):
        tiny_config(data={"dataset": "shakespeare", "partition": "natural", "train_samples": 10})
