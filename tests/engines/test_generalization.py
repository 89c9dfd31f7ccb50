"""``eval_train``: the generalization columns. Accuracy and cross-entropy on a seeded subset of the nodes'
training samples and the test cross-entropy are the formulas' values, leave every other number unchanged, and
show a gap where a model memorises its data (what D-SGD vs centralized SGD is compared on, docs/reproductions.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peerlearn.build import build
from peerlearn.config import ConfigError
from peerlearn.engines import simulate
from peerlearn.engines.run import GENERALIZATION_COLUMNS, TIMINGS, train_probe, train_probe_indices
from peerlearn.metrics import accuracy
from peerlearn.models.functional import FlatModel, accuracy_and_loss, predict_logits
from peerlearn.models.nets import CNN, MLP
from tests.conftest import tiny_config


@pytest.mark.parametrize("module, shape", [(MLP((12,), 5, (8,)), (12,)), (CNN((1, 8, 8), 5, (2, 3)), (1, 8, 8))],
                         ids=["mlp", "cnn"])
@pytest.mark.parametrize("max_elements", [1, 50, 2**24], ids=["one-value-chunks", "small-chunks", "one-chunk"])
def test_accuracy_and_loss_are_the_accuracy_and_cross_entropy_of_the_logits(module, shape, max_elements):
    flat = FlatModel(module)
    params = flat.init_params(6, seed=0, same_init=False) * 4  # confident, unequal models
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(23, *shape, generator=g), torch.randint(0, 5, (23,), generator=g)
    acc, loss = accuracy_and_loss(flat, params, x, y, max_elements=max_elements)
    logits = predict_logits(flat, params, x)
    assert torch.equal(acc, accuracy(logits, y))
    expected = torch.stack([F.cross_entropy(row.double(), y) for row in logits])
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-9)


def _rows(**sets):
    built = build(tiny_config(**{"num_rounds": 10, "eval_every": 5, **sets}))
    final = {}
    rows = simulate(built, on_finish=lambda p: final.update(params=p))
    return built, rows, final["params"]


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def test_the_columns_are_the_formulas_and_change_no_other_number():
    (_, plain, _), (built, probed, params) = _rows(), _rows(eval_train=300)
    for a, b in zip(plain, probed, strict=True):
        assert not set(GENERALIZATION_COLUMNS) & a.keys()
        assert set(b) == set(a) | set(GENERALIZATION_COLUMNS)
        assert all(_same(a[k], b[k]) for k in a if k not in TIMINGS)  # training and its seed streams untouched
    x, y = train_probe(built)
    idx = train_probe_indices(built)
    assert len(idx) == len(np.unique(idx)) == 300 and torch.equal(x, built.dataset.x_train[idx])
    assert torch.equal(y, built.dataset.y_train[idx])
    last = probed[-1]
    logits_train = predict_logits(built.flat, params, x)
    logits_test = predict_logits(built.flat, params, built.dataset.x_test)
    test_loss = torch.stack([F.cross_entropy(r.double(), built.dataset.y_test) for r in logits_test])
    train_loss = torch.stack([F.cross_entropy(r.double(), y) for r in logits_train])
    assert last["train_acc_mean"] == pytest.approx(float(accuracy(logits_train, y).mean()), abs=1e-12)
    assert last["train_eval_loss_mean"] == pytest.approx(float(train_loss.mean()), rel=1e-6)
    assert last["test_loss_mean"] == pytest.approx(float(test_loss.mean()), rel=1e-6)
    assert last["gap_acc_mean"] == pytest.approx(last["train_acc_mean"] - last["acc_mean"], abs=1e-12)
    assert last["gap_loss_mean"] == pytest.approx(last["test_loss_mean"] - last["train_eval_loss_mean"], abs=1e-12)
    avg = params.mean(0, keepdim=True)
    assert last["train_acc_avg_model"] == pytest.approx(float(accuracy(predict_logits(built.flat, avg, x), y)[0]))
    # never a node's local test split; more than the nodes hold: every training sample they hold, once
    held_out = build(tiny_config(eval_train=10**6, data={"local_test_fraction": 0.5}))
    idx = train_probe_indices(held_out)
    assert np.array_equal(idx, np.sort(np.concatenate(held_out.parts)))
    assert not np.isin(idx, np.concatenate(held_out.local_test_parts)).any()


def test_a_model_that_memorises_a_small_training_set_has_a_gap_that_opens_as_it_trains():
    """Four nodes on 40 digits in all, 150 rounds: every model fits its training samples and tests well below that;
    at round 0 (untrained) train and test agree."""
    _, rows, _ = _rows(num_nodes=4, num_rounds=150, eval_every=150, eval_train=40, topology={"graph": "complete"},
                       data={"train_samples": 40}, algorithm={"lr": 0.5})
    first, last = rows[0], rows[-1]
    assert abs(first["gap_acc_mean"]) < 0.1 and abs(first["gap_loss_mean"]) < 0.1
    assert last["train_acc_mean"] >= 0.95 and last["gap_acc_mean"] > 0.15, last
    assert last["gap_loss_mean"] > 0.3 and last["train_eval_loss_mean"] < 0.3 * last["test_loss_mean"], last


def test_a_negative_size_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="eval_train"):
        tiny_config(eval_train=-1)


def test_sweep_summaries_carry_every_generalization_column():
    """The sweep module stays free of torch, so it names the columns itself: the two lists must agree."""
    from peerlearn.sweep import FINAL_METRICS

    assert set(GENERALIZATION_COLUMNS) <= set(FINAL_METRICS)
