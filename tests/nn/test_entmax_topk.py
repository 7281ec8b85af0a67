"""The fast methods of sparsemax and 1.5-entmax (``zoo.nn.entmax``: ``topk``, ``blocks`` and the
default ``auto``) against the full sort (``method="sort"``): the same outputs and input gradients,
whatever the support size."""

from __future__ import annotations

import math

import pytest
import torch

import zoo.nn.entmax as E
from zoo.core.errors import ConfigError, ShapeError
from zoo.nn.entmax import entmax15, sparsemax

MAPS = {"sparsemax": sparsemax, "entmax15": entmax15}


FAST = ["topk", "blocks", "auto"]


def both(fn, z, dim=-1, method="topk"):
    """Outputs and input gradients (for a fixed random probe) of ``method`` and of the full sort."""
    probe = torch.randn(z.shape, dtype=z.dtype, generator=torch.Generator().manual_seed(7))
    results = []
    for each in (method, "sort"):
        leaf = z.detach().clone().requires_grad_()
        p = fn(leaf, dim=dim, method=each)
        (grad,) = torch.autograd.grad((p * probe).sum(), leaf)
        results.append((p, grad))
    return results


def assert_same(fn, z, dim=-1, tol=1e-12, method="topk"):
    (p, grad), (p_ref, grad_ref) = both(fn, z, dim, method)
    torch.testing.assert_close(p, p_ref, atol=tol, rtol=0)
    torch.testing.assert_close(grad, grad_ref, atol=10 * tol, rtol=0)
    return p_ref


@pytest.fixture
def small_k(monkeypatch):
    """``topk``: first k = 4 (rows of n >= 256 keep it), so that small supports already need retries;
    ``blocks``: the bound from the 2 largest block maxima, so that more blocks than that are taken."""
    for name in MAPS:
        monkeypatch.setitem(E.FIRST_K, name, 4)
        monkeypatch.setitem(E.BLOCK_K, name, 2)


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("n", [7, 40, 300, 2000])
@pytest.mark.parametrize("scale", [1e-3, 0.05, 1.0, 30.0])
@pytest.mark.parametrize("method", FAST)
def test_topk_equals_sort_on_random_rows(name, n, scale, method):
    """Scale 1e-3: supports of hundreds (every retry, then the full sort); 30: supports of 1 or 2."""
    z = scale * torch.randn(24, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    assert_same(MAPS[name], z)


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("method", FAST)
def test_retries_only_for_rows_whose_support_may_not_fit(name, small_k, method):
    """Rows of mixed scales: some fit the first k, others need 8, 16, ... or the whole row."""
    generator = torch.Generator().manual_seed(1)
    scales = torch.tensor([30.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 1e-3, 1e-5])[:, None]
    z = scales * torch.randn(9, 300, dtype=torch.float64, generator=generator)
    p = assert_same(MAPS[name], z, method=method)
    support = (p > 0).sum(-1)
    assert support.min() <= 3 and support.max() >= 100  # both ends happen


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("method", FAST)
def test_rows_of_equal_entries_fall_back_to_the_full_sort(name, small_k, method):
    z = torch.randn(4, 300, dtype=torch.float64)
    z[1] = 0.25
    z[3] = -7.0
    p = assert_same(MAPS[name], z, method=method)
    torch.testing.assert_close(p[[1, 3]], torch.full((2, 300), 1 / 300, dtype=torch.float64))


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("support", [3, 4, 5, 8, 9])
def test_certificate_at_support_k_and_k_plus_one(name, support, small_k, monkeypatch):
    """With k = 4: a support of 3 is certified by the first top-k; one of exactly 4 (the count reaches
    k, so an entry beyond might belong) or 5 is taken again with k = 8; 8 and 9 need k = 16."""
    ks = []
    topk = torch.Tensor.topk

    def spy(self, k, *args, **kwargs):
        ks.append(k)
        return topk(self, k, *args, **kwargs)

    z = torch.full((2, 300), -5.0, dtype=torch.float64)
    z[:, :support] = 0.0  # the top `support` entries tie: p = 1/support on them, 0 elsewhere
    z[1, support:] = torch.linspace(-5, -9, 300 - support, dtype=torch.float64)
    monkeypatch.setattr(torch.Tensor, "topk", spy)
    p = assert_same(MAPS[name], z, method="topk")
    assert ((p > 0).sum(-1) == support).all()
    torch.testing.assert_close(p[:, :support], torch.full((2, support), 1 / support, dtype=torch.float64))
    expected = {3: [4], 4: [4, 8], 5: [4, 8], 8: [4, 8, 16], 9: [4, 8, 16]}[support]
    assert ks == expected


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("method", FAST)
def test_support_just_above_and_below_the_threshold(name, small_k, method):
    """Entries a hair above and below tau: the top-k count and the full count agree."""
    base = torch.zeros(300, dtype=torch.float64)
    base[4:] = -torch.arange(1, 297, dtype=torch.float64) * 1e-3 - 0.2
    rows = torch.stack([base + shift for shift in torch.linspace(-0.5, 0.5, 41, dtype=torch.float64)])
    rows[:, :4] = 0  # varying gaps between the top block and the rest
    rows = rows + torch.linspace(0, 1, 41, dtype=torch.float64)[:, None] * base
    assert_same(MAPS[name], rows, method=method)


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("dim", [0, 1, 2])
@pytest.mark.parametrize("method", FAST)
def test_batched_shapes_along_any_dim(name, dim, small_k, method):
    z = torch.randn(260, 3, 270, dtype=torch.float64, generator=torch.Generator().manual_seed(dim)) * 0.2
    assert_same(MAPS[name], z, dim=dim, method=method)
    assert_same(MAPS[name], z.transpose(0, 2), dim=dim, method=method)  # non-contiguous input


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("method", FAST)
def test_masked_rows(name, small_k, method):
    """-inf masks: sparse masks, and rows with fewer finite entries than k (-inf inside the top k)."""
    z = torch.randn(5, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.05
    blocked = torch.rand(5, 300, generator=torch.Generator().manual_seed(4)) < 0.3
    blocked[2, 2:] = True  # two finite entries
    blocked[3, 1:] = True  # one
    z = z.masked_fill(blocked, -math.inf)
    p = assert_same(MAPS[name], z, method=method)
    assert (p[blocked] == 0).all() and p[3, 0] == 1
    torch.testing.assert_close(p.sum(-1), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ShapeError, match="1 of 5 rows hold all -inf"):
        MAPS[name](z.masked_fill(torch.arange(5)[:, None] == 4, -math.inf), method=method)


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("bad, words", [(math.nan, "NaN"), (math.inf, r"\+inf")])
@pytest.mark.parametrize("method", FAST)
def test_non_finite_rows_are_named(name, bad, words, method):
    z = torch.randn(3, 3000)
    z[1, 2500] = bad
    with pytest.raises(ShapeError, match=f"1 of 3 rows hold {words}"):
        MAPS[name](z, method=method)


@pytest.mark.parametrize("method", ["topk", "blocks"])
@pytest.mark.parametrize("name", MAPS)
def test_gradcheck_through_retries(name, method, small_k):
    generator = torch.Generator().manual_seed(5)
    scales = torch.tensor([[3.0], [0.1], [0.01]], dtype=torch.float64)
    z = torch.randn(3, 70, dtype=torch.float64, generator=generator) * scales  # 70 = 4 blocks of 16 + a tail
    assert torch.autograd.gradcheck(lambda t: MAPS[name](t, method=method), (z.requires_grad_(),))


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", FAST)
def test_low_precision_inputs_as_with_the_sort(name, dtype, method):
    z = torch.randn(16, 3000, generator=torch.Generator().manual_seed(6)).to(dtype)
    (p, grad), (p_ref, grad_ref) = both(MAPS[name], z, method=method)
    assert p.dtype == dtype and grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 0
    torch.testing.assert_close(p, p_ref, atol=tol, rtol=0)
    torch.testing.assert_close(grad, grad_ref, atol=10 * tol, rtol=0)


def test_unknown_method_is_refused():
    with pytest.raises(ConfigError, match=r"method must be one of \('auto', 'blocks', 'topk', 'sort'\), got 'heap'"):
        sparsemax(torch.randn(2, 5), method="heap")


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("n", [64, 65, 300, 1001, 5000])
def test_blocks_with_a_tail_and_supports_in_few_or_many_blocks(name, n, monkeypatch):
    """Rows whose length is not a multiple of the block (a tail), supports held in one block (the
    largest entries all in block 0), in the tail, or spread over every block."""
    monkeypatch.setitem(E.BLOCK_K, name, 2)
    generator = torch.Generator().manual_seed(n)
    z = torch.randn(6, n, dtype=torch.float64, generator=generator)
    stride = n // E.BLOCK[name]
    z[0, ::stride] += 6  # block 0 holds the largest entries
    z[1, -1] += 8  # the last entry (in the tail where there is one)
    z[2] *= 1e-3  # support spread over every block
    z[3] = 0.0  # all equal
    z[4] *= 40  # support of 1 or 2
    assert_same(MAPS[name], z, method="blocks")
    assert_same(MAPS[name], z.T.contiguous().T, method="blocks")  # column-major: the scatter path


@pytest.mark.parametrize("name", MAPS)
def test_auto_picks_blocks_for_long_rows(name, monkeypatch):
    calls = []
    block = E._block_threshold
    monkeypatch.setattr(E, "_block_threshold", lambda *args: calls.append(args[0].shape) or block(*args))
    MAPS[name](torch.randn(2, E.AUTO_BLOCKS_FROM - 1))
    MAPS[name](torch.randn(2, E.AUTO_BLOCKS_FROM))
    assert calls == [torch.Size([2, E.AUTO_BLOCKS_FROM])]


@pytest.mark.parametrize("method", ["sort", *FAST])
def test_empty_batches_and_single_entry_rows(method):
    for fn in MAPS.values():
        assert fn(torch.randn(0, 5000), method=method).shape == (0, 5000)
        assert fn(torch.randn(3, 0, 5000), method=method).shape == (3, 0, 5000)
        assert (fn(torch.randn(4, 1), method=method) == 1).all()
