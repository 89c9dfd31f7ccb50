"""Evaluation that scales (issue 16): per-chunk correct counts and a chunked consensus distance give the
numbers of the whole-tensor formulas, whatever the chunk size."""

from __future__ import annotations

import pytest
import torch

from peerlearn.metrics import accuracy, consensus_distance
from peerlearn.models.functional import FlatModel, predict_logits, predicted_matches
from peerlearn.models.nets import CNN, MLP


@pytest.mark.parametrize("module, shape", [(MLP((12,), 5, (8,)), (12,)), (CNN((1, 8, 8), 5, (2, 3)), (1, 8, 8))],
                         ids=["mlp", "cnn"])
@pytest.mark.parametrize("max_elements", [1, 50, 2**24], ids=["one-value-chunks", "small-chunks", "one-chunk"])
def test_counted_matches_equal_the_accuracy_of_the_logits(module, shape, max_elements):
    flat = FlatModel(module)
    params = flat.init_params(7, seed=0, same_init=False)
    g = torch.Generator().manual_seed(1)
    x, y, target = torch.randn(23, *shape, generator=g), torch.randint(0, 5, (23,), generator=g), torch.zeros(23,
                                                                                                     dtype=torch.long)
    logits = predict_logits(flat, params, x)
    acc, hit = predicted_matches(flat, params, x, [y, target], max_elements=max_elements)
    assert torch.equal(acc, accuracy(logits, y)) and torch.equal(hit, accuracy(logits, target))


@pytest.mark.parametrize("max_elements", [1, 7, 2**22])
def test_chunked_consensus_distance_equals_the_float64_formula(max_elements):
    x = torch.randn(13, 11, generator=torch.Generator().manual_seed(2)) * 3 + 1
    exact = float((x.double() - x.double().mean(0)).pow(2).sum(1).mean())
    assert consensus_distance(x, max_elements=max_elements) == pytest.approx(exact, rel=1e-12)
    assert consensus_distance(x[:1]) == 0.0
