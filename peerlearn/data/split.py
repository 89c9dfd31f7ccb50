"""A seeded, stratified train/test split, without importing scikit-learn (0.9 s of every run's start-up).

It draws exactly what ``sklearn.model_selection.train_test_split(..., stratify=y, random_state=seed)``
draws (StratifiedShuffleSplit: each class gets its share of the test set, the rounding remainders given
to classes chosen at random among ties, then the samples of each class permuted), so the datasets split
with it, and the goldens and documented results built on them, are unchanged;
``tests/data/test_split.py`` checks the equality against scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np


def _allocate(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """``draws`` spread over the classes in proportion to ``counts``: the floors, then one more for the
    classes with the largest fractional parts, ties broken by ``rng``."""
    exact = counts / counts.sum() * draws
    out = np.floor(exact)
    left = int(draws - out.sum())
    if left > 0:
        fraction = exact - out
        for value in np.sort(np.unique(fraction))[::-1]:
            tied = np.flatnonzero(fraction == value)
            take = min(len(tied), left)
            out[rng.choice(tied, size=take, replace=False)] += 1
            left -= take
            if left == 0:
                break
    return out.astype(int)


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) of labels ``y``: ``ceil(test_fraction * n)`` test samples, every class
    in proportion; a ValueError when a class has a single sample or there are fewer test samples than classes."""
    y = np.asarray(y)
    n = len(y)
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"a stratified split needs two samples of every class; class {classes[counts.argmin()]} "
                         "has one")
    if min(n_train, n_test) < len(classes):
        raise ValueError(f"{n_train} training and {n_test} test samples cannot hold all {len(classes)} classes")
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    train_k = _allocate(counts, n_train, rng)
    test_k = _allocate(counts - train_k, n_test, rng)
    train, test = [], []
    for idx, a, b in zip(members, train_k, test_k):
        shuffled = idx.take(rng.permutation(len(idx)), mode="clip")
        train.extend(shuffled[:a])
        test.extend(shuffled[a:a + b])
    return rng.permutation(train), rng.permutation(test)


def split_arrays(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    """``(x_train, y_train, x_test, y_test)`` by :func:`stratified_split`."""
    train, test = stratified_split(y, test_fraction, seed)
    return x[train], y[train], x[test], y[test]
