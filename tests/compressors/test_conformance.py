"""Every compressor through one battery: shape and reproducibility, lossless settings, unbiasedness
where claimed (checked statistically), the encoded byte count against its formula, and error feedback."""

import math

import pytest
import torch

from peerlearn import compressors

N, P = 6, 1000
K = 10  # 1% of P

# name -> (compressor, encoded bytes per row of P coordinates, lossless)
MEMBERS = {
    "identity": (compressors.identity(), 4 * P, True),
    "top_k": (compressors.top_k(0.01), min(8 * K, math.ceil(P / 8) + 4 * K), False),
    "top_k_dense": (compressors.top_k(0.5), math.ceil(P / 8) + 4 * (P // 2), False),  # the mask is smaller
    "random_k": (compressors.random_k(0.01, seed=3), 4 * K, False),
    "sign": (compressors.sign(), math.ceil(P / 8) + 4, False),
    "qsgd": (compressors.qsgd(16, seed=3), math.ceil(P * 6 / 8) + 4, False),  # 33 codes: 6 bits each
    "int8": (compressors.int8(), P + 8, False),
    "fp16": (compressors.fp16(), 2 * P, False),
}
UNBIASED = {"identity", "random_k", "qsgd"}


def _x(seed=0):
    return torch.randn(N, P, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MEMBERS)
def test_shape_bytes_and_reproducibility(name):
    c, nbytes, lossless = MEMBERS[name]
    x = _x()
    out, b, state = c.update(x, c.init(x))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert b.tolist() == [nbytes] * N
    again, _, _ = c.update(x, c.init(x))
    assert torch.equal(out, again)  # same state, same message
    if lossless:
        assert torch.equal(out, x)
    else:
        # biased ones contract (||C(x) - x|| < ||x||); random-k's rescaled error is about sqrt(P/k - 1) ||x||
        bound = math.sqrt(P / K) * 1.1 if name == "random_k" else 1.0
        assert not torch.equal(out, x) and float((out - x).norm()) < float(x.norm()) * bound
    assert c.unbiased == (name in UNBIASED)


@pytest.mark.parametrize("name", sorted(UNBIASED - {"identity"}))
def test_unbiased_compressors_average_to_the_input(name):
    c, _, _ = MEMBERS[name]
    x = _x(1)[:2]
    state, total, draws = c.init(x), torch.zeros_like(x), 3000
    for _ in range(draws):
        out, _, state = c.update(x, state)
        total += out
    err = (total / draws - x).abs()
    # per coordinate the mean of `draws` samples has std <= sqrt(var/draws); random-k: var ~ x^2 (P/k - 1)
    bound = 5 * x.abs().clamp_min(0.1) * math.sqrt(P / K / draws) if name == "random_k" else 5 * x.norm(dim=1, keepdim=True) / 16 / math.sqrt(draws)
    assert bool((err < bound).all()), float((err / bound).max())


def test_lossless_settings_are_the_identity():
    x = _x(2)
    assert torch.equal(compressors.top_k(1.0).update(x, None)[0], x)
    c = compressors.random_k(1.0, seed=0)
    assert torch.equal(c.update(x, c.init(x))[0], x)
    ints = torch.randint(-100, 100, (N, P)).float()  # fp16 holds small integers exactly
    assert torch.equal(compressors.fp16().update(ints, None)[0], ints)


def test_top_k_keeps_the_largest_and_qsgd_lands_on_its_levels():
    x = _x(3)
    out, _, _ = compressors.top_k(0.01).update(x, None)
    kept = out != 0
    assert kept.sum(1).tolist() == [K] * N
    assert bool((x.abs()[kept].view(N, K).min(1).values >= x.abs().masked_fill(kept, 0).max(1).values).all())
    c = compressors.qsgd(4, seed=0)
    q, _, _ = c.update(x, c.init(x))
    levels = q.abs() / x.norm(dim=1, keepdim=True) * 4
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["top_k", "sign"])
def test_error_feedback_residual_carries_what_was_dropped(name):
    inner, _, _ = MEMBERS[name]
    c = compressors.error_feedback(inner)
    x = _x(4)
    state = c.init(x)
    sent_total = torch.zeros_like(x)
    norms = {}
    for t in range(1, 401):
        out, _, state = c.update(x, state)
        sent_total += out
        if t % 100 == 0:
            torch.testing.assert_close(sent_total + state.residual_NP, t * x, rtol=1e-4, atol=1e-2)  # nothing lost
            norms[t] = float(state.residual_NP.norm())
    # the residual grows sublinearly (without feedback the dropped mass would grow like t): the sum sent tracks t x
    assert norms[400] < 1.6 * norms[200] and norms[400] < 0.2 * float((400 * x).norm())
