"""Polynomial-method fast attention against exact attention in fp64 on tiny sizes."""

import math

import pytest
import torch

from zoo.core.errors import ConfigError, ShapeError
from zoo.nn import exact_attention, fast_attention, feature_dim, taylor_error_bound, taylor_features

pytestmark = pytest.mark.usefixtures("one_thread")


def qkv(length=12, dim=4, scale=1.0, batch=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(*batch, length, dim, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("dim", [1, 3, 4])
@pytest.mark.parametrize("degree", [0, 1, 2, 3, 5])
def test_feature_map_reproduces_the_taylor_polynomial(dim, degree):
    x, y, _ = qkv(6, dim)
    feats_x, feats_y = taylor_features(x, degree), taylor_features(y, degree)
    assert feats_x.shape == (6, feature_dim(dim, degree)) == (6, math.comb(dim + degree, degree))
    inner = x @ y.T
    expected = sum(inner**j / math.factorial(j) for j in range(degree + 1))
    torch.testing.assert_close(feats_x @ feats_y.T, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_error_falls_with_degree_for_bounded_entries(causal):
    q, k, v = qkv(16, 4, scale=0.6)
    exact = exact_attention(q, k, v, causal=causal)
    errors = [float((fast_attention(q, k, v, degree=g, causal=causal, exact_fallback=False, block=5) - exact)
                    .abs().max()) for g in (1, 2, 4, 6, 8)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5


@pytest.mark.parametrize("causal", [False, True])
def test_near_exact_for_small_entries(causal):
    q, k, v = qkv(13, 4, scale=0.1, batch=(2, 3))
    out = fast_attention(q, k, v, degree=6, causal=causal, exact_fallback=False, block=4)
    assert out.shape == (2, 3, 13, 4)
    torch.testing.assert_close(out, exact_attention(q, k, v, causal=causal), rtol=0, atol=1e-11)


def test_causal_equals_masked_exact_at_any_block_size():
    q, k, v = qkv(11, 3, scale=0.2)
    outs = [fast_attention(q, k, v, degree=8, causal=True, exact_fallback=False, block=b) for b in (1, 3, 11, 64)]
    for out in outs:
        torch.testing.assert_close(out, exact_attention(q, k, v, causal=True), rtol=0, atol=1e-9)


def test_taylor_error_bound_holds_entrywise():
    for bound in (0.25, 1.0, 3.0):
        x = torch.linspace(-bound, bound, 201, dtype=torch.float64)
        for degree in (2, 4, 6):
            taylor = sum(x**j / math.factorial(j) for j in range(degree + 1))
            assert float(((x.exp() - taylor) / x.exp()).abs().max()) <= taylor_error_bound(bound, degree)


def test_fallback_rules():
    q, k, v = qkv(16, 4, scale=3.0)  # large entries: the degree-2 bound is far above tolerance
    exact = exact_attention(q, k, v)
    assert torch.equal(fast_attention(q, k, v, degree=2, exact_fallback="auto"), exact)
    assert torch.equal(fast_attention(q, k, v, degree=2, exact_fallback=True), exact)
    assert not torch.allclose(fast_attention(q, k, v, degree=2, exact_fallback=False), exact, atol=1e-3)
    q, k, v = qkv(8, 4, scale=0.05)  # small entries, but F = C(8, 4) = 70 >= L = 8 keys: "auto" is exact
    assert torch.equal(fast_attention(q, k, v, degree=4, exact_fallback="auto"), exact_attention(q, k, v))
    assert not torch.equal(fast_attention(q, k, v, degree=4, exact_fallback=True), exact_attention(q, k, v))


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"k": torch.zeros(12, 3)}, ShapeError, "last dim"),
    ({"v": torch.zeros(5, 4)}, ShapeError, "number of keys"),
    ({"q": torch.zeros(7, 4), "causal": True}, ShapeError, "causal"),
    ({"q": torch.zeros(4)}, ShapeError, "[..., L, d]"),
    ({"degree": 0}, ConfigError, "degree"),
    ({"exact_fallback": "yes"}, ConfigError, "exact_fallback"),
])
def test_bad_input_is_one_line(kwargs, error, words):
    q, k, v = qkv(12, 4)
    args = {"q": q, "k": k, "v": v, **kwargs}
    with pytest.raises(error) as info:
        fast_attention(**args)
    assert words in str(info.value) and "\n" not in str(info.value)
