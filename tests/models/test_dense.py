"""The closed-form dense path (issue 16): the gradients and losses of autograd, for every dense shape family,
chosen only for modules it computes exactly, and chunked over rows without changing a number."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peerlearn.models.dense import dense_layout, make_dense_grad_fn
from peerlearn.models.functional import FlatModel, make_grad_fn
from peerlearn.models.nets import CNN, MLP, LogisticRegression


def _batch(num_rows, size, input_shape, num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rows, size, *input_shape, generator=g)
    y = torch.randint(0, num_classes, (num_rows, size), generator=g)
    return x, y


@pytest.mark.parametrize("module, input_shape, num_classes", [
    (LogisticRegression((784,), 62), (784,), 62),            # FEMNIST-shaped logistic regression
    (MLP((64,), 10, (64,)), (64,), 10),                      # the quickstart
    (MLP((1, 8, 8), 10, (32, 16, 8)), (1, 8, 8), 10),        # image input, three hidden layers
    (MLP((5,), 2, (1,)), (5,), 2),                           # width one, two classes
    (nn.Sequential(nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3)), (12,), 3),  # a user's module, no Flatten
], ids=["logreg-784-62", "mlp-64-64-10", "mlp-image-3-hidden", "mlp-width-1", "user-sequential"])
def test_dense_gradients_equal_autograd(module, input_shape, num_classes):
    flat = FlatModel(module)
    layout = dense_layout(module)
    assert layout is not None
    params = flat.init_params(9, seed=1, same_init=False)
    x, y = _batch(9, 6, input_shape, num_classes)
    y[3] = -1  # a relay row: zero loss, zero gradient
    loss_v, grads_v = make_grad_fn(flat, "vmap")(params, (x, y))
    loss_d, grads_d = make_dense_grad_fn(layout)(params, (x, y))
    torch.testing.assert_close(loss_d, loss_v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads_d, grads_v, rtol=1e-5, atol=1e-6)
    assert float(loss_d[3]) == 0 and float(grads_d[3].abs().max()) == 0
    assert float(grads_d.abs().max()) > 0


@pytest.mark.parametrize("module", [
    CNN((1, 8, 8), 10),
    nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)),      # another activation
    nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 2)),         # no bias
    nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2)),    # two linears in a row
    nn.Sequential(nn.Linear(4, 4), nn.ReLU()),                                       # ends in ReLU
], ids=["cnn", "tanh", "no-bias", "linear-linear", "ends-in-relu"])
def test_anything_else_is_left_to_vmap(module):
    assert dense_layout(module) is None


def test_a_subclass_with_its_own_forward_is_left_to_vmap():
    class Scaled(nn.Sequential):
        def forward(self, x):
            return 2 * super().forward(x)

    assert dense_layout(Scaled(nn.Linear(3, 2))) is None


@pytest.mark.parametrize("strategy", ["dense", "vmap"])
def test_row_chunks_change_no_number(strategy):
    module = MLP((64,), 10, (32,))
    flat = FlatModel(module)
    params = flat.init_params(10, seed=2, same_init=False)
    x, y = _batch(10, 4, (64,), 10, seed=3)
    whole = make_grad_fn(flat, strategy)(params, (x, y))
    chunked = make_grad_fn(flat, strategy, max_rows=3)(params, (x, y))
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_auto_picks_dense_for_dense_modules_and_chunks_instead_of_looping():
    from peerlearn.build import choose_grad_strategy
    from tests.conftest import tiny_config

    cfg = tiny_config()  # 16 nodes, batch 8, an MLP
    mlp, cnn = MLP((64,), 10, (16,)), CNN((1, 8, 8), 10)
    assert choose_grad_strategy(cfg, mlp, activations_per_sample=1_000) == ("dense", None)
    assert choose_grad_strategy(cfg, cnn, activations_per_sample=1_000) == ("vmap", None)
    # 16 nodes x 8 samples x 100,000 activations x 12 bytes = 154 MB: a 50 MB budget holds 5 rows at a time
    assert choose_grad_strategy(cfg, cnn, activations_per_sample=100_000, budget_bytes=50 * 10**6) == ("vmap", 5)
    forced = tiny_config(model={"grad_strategy": "loop"})
    assert choose_grad_strategy(forced, mlp, activations_per_sample=10) == ("loop", None)
