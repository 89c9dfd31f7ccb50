"""Conformance battery: every aggregator, every property (adding a rule is one line in RULES)."""

import functools

import pytest
import torch

from peerlearn import aggregators as A

# name -> (rule with its hyper-parameters, tolerates f arbitrary inputs among k?)
RULES = {
    "mean": (A.masked_mean, False),
    "median": (A.coordinate_median, True),
    "trimmed_mean": (functools.partial(A.trimmed_mean, f=2), True),
    "krum": (functools.partial(A.krum, f=2), True),
    "multi_krum": (functools.partial(A.multi_krum, f=2), True),
    "bulyan": (functools.partial(A.bulyan, f=1), True),
    "geometric_median": (A.geometric_median, True),
    "centered_clipping": (functools.partial(A.centered_clipping, tau=0.5, num_iters=3), True),
    "nearest_neighbor_mean": (functools.partial(A.nearest_neighbor_mean, f=2), True),
    # own weight 1 and similarity weights in [0, 1]: not a breakdown-point rule, so "robust" is not claimed
    "foolsgold": (functools.partial(A.foolsgold, reference_P=torch.zeros(5, dtype=torch.float64)), False),
    "flag": (A.flag_aggregate, True),  # displacements capped at the median norm: bounded
}
N, K, P = 6, 9, 5


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, K, P, generator=g, dtype=torch.float64)
    valid = torch.ones(N, K, dtype=torch.bool)
    valid[1, 7:] = False  # node 1 has two padded slots, node 4 one
    valid[4, 8] = False
    return x, valid


@pytest.mark.parametrize("name", RULES)
def test_output_shape_and_dtype(name):
    x, valid = _inputs()
    out = RULES[name][0](x, valid)
    assert out.shape == (N, P) and out.dtype == x.dtype and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", RULES)
def test_permutation_invariance_over_neighbours(name):
    x, valid = _inputs()
    perm = torch.cat([torch.tensor([0]), 1 + torch.randperm(K - 1, generator=torch.Generator().manual_seed(1))])
    assert torch.allclose(RULES[name][0](x, valid), RULES[name][0](x[:, perm], valid[:, perm]), atol=1e-8)


@pytest.mark.parametrize("name", RULES)
def test_all_inputs_equal_gives_that_input(name):
    x, valid = _inputs()
    same = x[:, :1].expand(N, K, P).clone()
    assert torch.allclose(RULES[name][0](same, valid), x[:, 0], atol=1e-8)


@pytest.mark.parametrize("name", RULES)
def test_padding_never_leaks(name):
    x, valid = _inputs()
    reference = RULES[name][0](x, valid)
    garbage = torch.where(valid[..., None], x, torch.full_like(x, 1e12))
    assert torch.allclose(RULES[name][0](garbage, valid), reference, atol=1e-8)


@pytest.mark.parametrize("name", RULES)
def test_breakdown_f_arbitrary_inputs_stay_bounded(name):
    """Two of nine inputs at 1e6: a robust rule stays within the honest inputs' range; the mean does not."""
    rule, robust = RULES[name]
    if name == "foolsgold":
        pytest.skip("foolsgold claims no breakdown point: it filters look-alikes (test_foolsgold_gives_...)")
    x, valid = _inputs()
    x[:, [3, 5]] = 1e6
    out = rule(x, torch.ones_like(valid))
    honest = x[:, [0, 1, 2, 4, 6, 7, 8]]
    bound = honest.abs().amax(dim=(1, 2)).max() + 1.0
    if robust:
        assert float(out.abs().max()) <= bound
    else:
        assert float(out.abs().max()) > 1e4


def test_krum_selects_away_from_a_far_outlier():
    x = torch.zeros(1, 7, 2, dtype=torch.float64)
    x[0, :6, 0] = torch.tensor([0.0, 0.1, -0.1, 0.2, -0.2, 0.05])
    x[0, 6] = torch.tensor([50.0, 50.0])
    valid = torch.ones(1, 7, dtype=torch.bool)
    out = A.krum(x, valid, f=1)
    assert float(out.abs().max()) <= 0.2  # one of the clustered inputs, never the outlier
    assert any(torch.equal(out[0], x[0, j]) for j in range(6))


def test_median_and_trimmed_mean_known_values():
    x = torch.tensor([[[1.0], [2.0], [3.0], [100.0], [-50.0]]])
    valid = torch.ones(1, 5, dtype=torch.bool)
    assert A.coordinate_median(x, valid).item() == 2.0
    assert A.trimmed_mean(x, valid, f=1).item() == pytest.approx(2.0)
    assert A.trimmed_mean(x, valid, f=0).item() == pytest.approx(11.2)


def test_geometric_median_of_collinear_points_is_the_middle():
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]]], dtype=torch.float64)
    out = A.geometric_median(x, torch.ones(1, 3, dtype=torch.bool), num_iters=200)
    assert torch.allclose(out, torch.tensor([[1.0, 0.0]], dtype=torch.float64), atol=1e-3)


def test_too_few_inputs_for_f_is_a_clear_error():
    x, valid = _inputs()
    with pytest.raises(ValueError, match="algorithm.f: trimmed_mean with f=4 needs every node to receive at least 9"):
        A.trimmed_mean(x, valid, f=4)
    with pytest.raises(ValueError, match="algorithm.f: krum"):
        A.krum(x, valid, f=3)


def test_foolsgold_gives_identical_clones_zero_weight():
    """Three clones sending one vector are dropped; distinct honest neighbours keep positive weight."""
    g = torch.Generator().manual_seed(0)
    honest = torch.randn(1, 5, 6, generator=g, dtype=torch.float64)
    clone = torch.full((1, 3, 6), 50.0, dtype=torch.float64)
    x = torch.cat([honest, clone], 1)
    valid = torch.ones(1, 8, dtype=torch.bool)
    out = A.foolsgold(x, valid, reference_P=torch.zeros(6, dtype=torch.float64))
    assert float(out.abs().max()) < float(honest.abs().max())  # none of the clones' 50s got through
    assert not torch.allclose(out[0], honest[0, 0])  # honest neighbours did contribute


def _bulyan_reference(x_KP, f):
    """Bulyan for one node, written as the paper states it (a loop over Krum selections)."""
    remaining, chosen = list(range(len(x_KP))), []
    for _ in range(len(x_KP) - 2 * f):
        k = len(remaining)
        scores = []  # (Krum score, then the summed distance to all others as tie-break)
        for i in remaining:
            d = sorted(float((x_KP[i] - x_KP[j]).pow(2).sum()) for j in remaining if j != i)
            scores.append((sum(d[: max(k - f - 2, 1)]), sum(d)))
        chosen.append(remaining.pop(min(range(k), key=scores.__getitem__)))
    sel = x_KP[chosen]  # [theta, P]
    beta = len(chosen) - 2 * f
    med = sel.median(0).values  # lower median, as coordinate_median
    out = torch.empty(x_KP.shape[1], dtype=x_KP.dtype)
    for c in range(x_KP.shape[1]):
        order = (sel[:, c] - med[c]).abs().argsort(stable=True)
        out[c] = sel[order[:beta], c].mean()
    return out


@pytest.mark.parametrize("f", [1, 2])
def test_bulyan_matches_a_per_node_loop(f):
    x, valid = _inputs(seed=3)
    x = torch.cat([x, x[:, :4] + 0.01], 1)  # 13 inputs: f=2 needs 4f+3 = 11
    valid = torch.cat([valid, torch.ones(N, 4, dtype=torch.bool)], 1)
    out = A.bulyan(x, valid, f=f)
    for i in range(N):
        assert torch.allclose(out[i], _bulyan_reference(x[i][valid[i]], f), atol=1e-10), i


def test_bulyan_needs_4f_plus_3_inputs():
    x, valid = _inputs()
    with pytest.raises(ValueError, match="bulyan with f=2 needs every node to receive at least 11"):
        A.bulyan(x, valid, f=2)
