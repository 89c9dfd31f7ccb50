"""DIMAT's permutation alignment: exact on permuted copies, better merges than raw averaging, and as a config."""

import pytest
import torch
from torch import nn

from peerlearn import algorithms, optim
from peerlearn.aggregators.aligned import align, aligned_mean, hidden_activations, permute_hidden
from peerlearn.build import build
from peerlearn.config import ConfigError
from peerlearn.engines import simulate
from peerlearn.engines.comm import SimComm
from peerlearn.engines.run import Evaluator
from peerlearn.models.dense import dense_layout
from peerlearn.topology import complete_graph, uniform_weights
from tests.conftest import tiny_config


def _mlp_rows(count, widths=(8, 16, 12, 3), seed=0):
    torch.manual_seed(seed)
    rows, layout = [], None
    for _ in range(count):
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        module = nn.Sequential(*layers[:-1])
        layout = dense_layout(module)
        rows.append(torch.cat([p.detach().reshape(-1) for p in module.parameters()]))
    return torch.stack(rows), layout


def test_permuted_copies_align_back_to_the_original_exactly():
    x, layout = _mlp_rows(3)
    inputs = torch.randn(128, 8, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    perms = [torch.stack([torch.randperm(h, generator=g) for _ in range(3)]) for h in (16, 12)]
    shuffled = permute_hidden(x, layout, perms)
    assert not torch.equal(shuffled, x)
    # the same functions: the output layer's pre-activations do not change
    def outputs(rows):
        acts = hidden_activations(rows, layout, inputs)[-1]
        w_out = rows[:, -(12 * 3 + 3):-3].reshape(-1, 3, 12)
        return torch.bmm(acts, w_out.transpose(1, 2)) + rows[:, -3:].unsqueeze(1)
    assert torch.allclose(outputs(shuffled), outputs(x), atol=1e-5)
    dead = sum(int((a.std(1) == 0).sum()) for a in hidden_activations(x, layout, inputs))
    assert dead > 0  # units dead on the batch: matched by their weights, so still exact
    assert torch.equal(align(x, shuffled, layout, inputs), x)
    # the merge of a model with a permuted copy of itself is the model, where raw averaging is not
    x_NKP = torch.stack([x, shuffled], 1)
    valid = torch.ones(3, 2, dtype=torch.bool)
    assert torch.allclose(aligned_mean(x_NKP, valid, layout, inputs), x, atol=1e-7)
    assert not torch.allclose(x_NKP.mean(1), x, atol=1e-3)


@pytest.mark.integration
def test_merging_independently_trained_models_beats_raw_averaging():
    """Four MLPs trained alone from different initialisations, merged once: aligned mean vs plain mean."""
    cfg = tiny_config(num_nodes=4, data={"partition": "iid"}, model={"hidden": [64], "same_init": False},
                      algorithm={"name": "local", "lr": 0.1, "batch_size": 16})
    b = build(cfg)
    alg = algorithms.local_only(optim.sgd(0.1), 1)
    comm = SimComm(uniform_weights(complete_graph(4)))
    x, state = b.params_NP.clone(), alg.init(b.params_NP)
    for _ in range(300):
        x, state, _ = alg.step(state, x, b.batches, b.grad_fn, comm)
    ds = b.dataset
    evaluate = Evaluator(b.flat, ds.x_test, ds.y_test)
    alone = evaluate(x)["acc_mean"]
    layout = dense_layout(b.flat.module)
    inputs = ds.x_train[:256].reshape(256, -1).float()
    x_NKP = x[None].expand(4, 4, -1)
    valid = torch.ones(4, 4, dtype=torch.bool)
    raw = evaluate(x.mean(0, keepdim=True))["acc_mean"]
    merged = evaluate(aligned_mean(x_NKP[:1], valid[:1], layout, inputs))["acc_mean"]
    assert alone > 0.85
    print(f"alone {alone:.3f}, raw average {raw:.3f}, aligned average {merged:.3f}")
    assert merged > raw + 0.1, (alone, raw, merged)


def test_dimat_as_the_dsgd_aggregator_trains():
    cfg = tiny_config(num_rounds=100, eval_every=50, model={"same_init": False},
                      algorithm={"aggregator": "dimat", "align_samples": 64})
    rows = simulate(build(cfg))
    assert rows[-1]["acc_mean"] > rows[0]["acc_mean"] + 0.25


def test_dimat_refuses_a_model_it_cannot_align():
    cfg = tiny_config(model={"name": "cnn"}, algorithm={"aggregator": "dimat"})
    with pytest.raises(ConfigError, match="algorithm.aggregator"):
        build(cfg)
