import numpy as np
import pytest
import torch

from peerlearn.data import NodeSampler, dirichlet, iid, quantity_skew, shards

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 10 balanced classes
PARTITIONS = {
    "iid": lambda seed: iid(LABELS, 20, seed=seed),
    "dirichlet": lambda seed: dirichlet(LABELS, 20, alpha=0.5, seed=seed),
    "shards": lambda seed: shards(LABELS, 20, classes_per_node=2, seed=seed),
    "quantity_skew": lambda seed: quantity_skew(LABELS, 20, alpha=1.0, seed=seed),
}


@pytest.mark.parametrize("name", PARTITIONS)
def test_partition_is_a_seeded_exact_cover(name):
    parts = PARTITIONS[name](0)
    assert len(parts) == 20
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(len(LABELS)))  # every sample exactly once
    assert min(len(p) for p in parts) >= 1
    again = PARTITIONS[name](0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = PARTITIONS[name](1)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def _classes_per_node(parts):
    return np.mean([len(np.unique(LABELS[p])) for p in parts])


def test_dirichlet_skew_grows_as_alpha_shrinks():
    skewed = _classes_per_node(dirichlet(LABELS, 20, alpha=0.1, seed=0))
    mild = _classes_per_node(dirichlet(LABELS, 20, alpha=100.0, seed=0))
    assert skewed < 5 < mild


def test_shards_give_about_k_classes_per_node():
    assert _classes_per_node(shards(LABELS, 20, classes_per_node=2, seed=0)) <= 2.5
    assert _classes_per_node(iid(LABELS, 20, seed=0)) > 8


def test_quantity_skew_keeps_labels_iid_but_sizes_uneven():
    parts = quantity_skew(LABELS, 20, alpha=0.5, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) > 3 * min(sizes) and min(sizes) >= 2


def test_impossible_partitions_are_errors():
    with pytest.raises(ValueError, match="data.alpha"):
        dirichlet(LABELS, 10, alpha=0.0)
    with pytest.raises(ValueError, match="no split with >= 60 samples"):
        dirichlet(LABELS, 20, alpha=0.05, min_size=60, max_tries=3)
    with pytest.raises(ValueError, match="cannot give"):
        quantity_skew(LABELS[:30], 20, alpha=1.0, min_size=2)


def test_sampler_draws_only_from_each_nodes_own_data():
    x = torch.arange(1000, dtype=torch.float32)[:, None]
    y = torch.from_numpy(LABELS)
    parts = shards(LABELS, 20, 2, seed=0)
    sampler = NodeSampler(x, y, parts, batch_size=32, seed=0)
    xb, yb = sampler.next()
    assert xb.shape == (20, 32, 1) and yb.shape == (20, 32)
    for i, p in enumerate(parts):
        assert set(xb[i, :, 0].long().tolist()) <= set(p.tolist())
    rows = torch.tensor([3, 7])
    a = NodeSampler(x, y, parts, 32, seed=5)
    b = NodeSampler(x, y, parts, 32, seed=5)
    xa, _ = a.next(rows)
    xfull, _ = b.next()
    assert torch.equal(xa, xfull[rows])  # a subset of nodes sees the same stream as the full draw
