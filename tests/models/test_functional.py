import pytest
import torch

from peerlearn import optim
from peerlearn.algorithms.local import local_steps
from peerlearn.models import FlatModel, build_model, make_grad_fn, predict_logits


def _batches(n, steps, b, shape, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, b, *shape, generator=g), torch.randint(0, classes, (n, b), generator=g))
            for _ in range(steps)]


class ListStream:
    def __init__(self, batches):
        self.batches, self.k = batches, 0

    def next(self, rows=None):
        x, y = self.batches[self.k]
        self.k += 1
        return (x, y) if rows is None else (x[rows], y[rows])


def test_ravel_unravel_round_trip():
    m = build_model("mlp", (10,), 3, hidden=(7, 5))
    flat = FlatModel(m)
    p = flat.ravel()
    assert p.shape == (flat.num_params,) == (10 * 7 + 7 + 7 * 5 + 5 + 5 * 3 + 3,)
    views = flat.unravel(p)
    for (name, param), view in zip(m.named_parameters(), views.values()):
        assert torch.equal(param, view)
    clone = build_model("mlp", (10,), 3, hidden=(7, 5))
    flat.load_into(clone, p * 2)
    assert torch.allclose(FlatModel(clone).ravel(), p * 2)


def test_init_is_seeded_and_same_init_is_shared():
    flat = FlatModel(build_model("mlp", (10,), 3))
    a, b = flat.init_params(4, seed=1), flat.init_params(4, seed=1)
    assert torch.equal(a, b) and torch.equal(a[0], a[3])
    diff = flat.init_params(4, seed=1, same_init=False)
    assert not torch.equal(diff[0], diff[1])


@pytest.mark.parametrize("name, shape, keys", [
    ("logreg", (12,), {}), ("mlp", (12,), {}), ("cnn", (1, 8, 8), {}),
    ("resnet", (3, 8, 8), {"depth": 8, "width": 4}), ("vgg11", (3, 8, 8), {"width": 2}),
    ("transformer", (6,), {"d_model": 8, "heads": 2, "layers": 2}),
])
def test_batched_training_equals_separate_single_node_runs(name, shape, keys):
    """N nodes trained in one batched computation = N nn.Modules each with its own torch.optim.SGD."""
    n, steps, lr, mom = 5, 4, 0.1, 0.9
    tokens = name == "transformer"
    flat = FlatModel(build_model(name, shape, 4, **keys))
    params = flat.init_params(n, seed=0, same_init=False)
    batches = _batches(n, steps, 6, shape, 4)
    if tokens:  # token windows over a vocabulary of 4
        batches = [(x.abs().mul(2).long().clamp(max=3), y) for x, y in batches]
    for strategy in ("vmap", "loop") + (("dense",) if name in ("logreg", "mlp") else ()):
        opt = optim.sgd(lr, momentum=mom)
        trained, _, _ = local_steps(params, opt.init(params), opt, ListStream(batches), make_grad_fn(flat, strategy),
                                    steps)
        for i in range(n):
            module = flat.load_into(build_model(name, shape, 4, **keys), params[i])
            torch_opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=mom)
            for x, y in batches:
                torch_opt.zero_grad()
                torch.nn.functional.cross_entropy(module(x[i]), y[i]).backward()
                torch_opt.step()
            assert torch.allclose(trained[i], FlatModel(module).ravel(), atol=1e-5), (strategy, i)


def test_predict_logits_chunks_give_the_same_result():
    flat = FlatModel(build_model("mlp", (6,), 3))
    params = flat.init_params(7, seed=0, same_init=False)
    x = torch.randn(20, 6)
    full = predict_logits(flat, params, x)
    for budget in (1, 50, 400, 10**6):  # one sample per chunk ... everything at once
        chunked = predict_logits(flat, params, x, max_elements=budget)
        assert full.shape == chunked.shape == (7, 20, 3) and torch.allclose(full, chunked, atol=1e-6)


def test_cnn_refuses_flat_inputs():
    with pytest.raises(ValueError, match="image-shaped"):
        build_model("cnn", (64,), 10)


@pytest.mark.parametrize("name, shape, keys", [
    ("mlp", (12,), {}), ("cnn", (1, 8, 8), {}), ("gru", (6,), {"hidden": [4]}),
    ("resnet", (3, 8, 8), {"depth": 8, "width": 4}), ("vgg11", (3, 8, 8), {"width": 2}),
    ("transformer", (6,), {"d_model": 8, "heads": 2}),
])
def test_seeded_init_covers_every_parameter(name, shape, keys):
    """Same seed, same models; with same_init off every parameter tensor differs between nodes (a parameter
    the seeded re-initialisation missed would keep the template's value on every node)."""
    flat = FlatModel(build_model(name, shape, 4, **keys))
    a = flat.init_params(2, seed=3, same_init=False)
    assert torch.equal(a, flat.init_params(2, seed=3, same_init=False))
    first, second = flat.unravel(a[0]), flat.unravel(a[1])
    for key in first:
        if first[key].numel() > 1 and first[key].std() > 0:  # GroupNorm/LayerNorm start at constants by design
            assert not torch.equal(first[key], second[key]), key
