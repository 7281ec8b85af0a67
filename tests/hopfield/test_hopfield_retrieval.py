"""Separation functions against brute force, and Hopfield retrieval/energy against their definitions."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from zoo.core.errors import ConfigError, ShapeError
from zoo.hopfield.retrieval import SEPARATIONS, conjugate, energy, retrieval_weights, retrieve, separate
from zoo.nn.entmax import entmax15, entmax_bisect, sparsemax


def brute_force_entmax(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha-entmax of one vector by trying every support S: on S, p_i = [(alpha-1) z_i - tau]^(1/(alpha-1))
    with tau solving sum_S p = 1 (solved by a long fp64 bisection), valid if it is positive exactly on S."""
    n = len(z)
    x = (alpha - 1) * z.double()
    e = 1 / (alpha - 1)
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            idx = list(support)
            lo, hi = x[idx].min() - 10.0, x[idx].min()  # tau < min over S keeps every term positive
            for _ in range(200):
                mid = (lo + hi) / 2
                (lo, hi) = (mid, hi) if ((x[idx] - mid) ** e).sum() > 1 else (lo, mid)
            tau = (lo + hi) / 2
            outside = [i for i in range(n) if i not in support]
            if all(x[i] <= tau + 1e-12 for i in outside):
                p = torch.zeros(n, dtype=torch.float64)
                p[idx] = (x[idx] - tau) ** e
                return p
    raise AssertionError("no support found")


def brute_force_sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto the simplex by trying every support (closed-form tau on each)."""
    n = len(z)
    best = None
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            idx = list(support)
            tau = (z[idx].sum() - 1) / size
            p = torch.zeros(n, dtype=torch.float64)
            p[idx] = z[idx] - tau
            if (p[idx] > 0).all():
                distance = ((p - z) ** 2).sum()
                if best is None or distance < best[0]:
                    best = (distance, p)
    return best[1]


@pytest.mark.parametrize("seed", range(3))
def test_sparse_maps_match_brute_force(seed):
    z = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2
    for row in z:
        torch.testing.assert_close(sparsemax(row), brute_force_sparsemax(row))
        torch.testing.assert_close(entmax15(row), brute_force_entmax(row, 1.5))
        for alpha in (1.25, 1.5, 1.75, 2.0):
            torch.testing.assert_close(entmax_bisect(row, alpha, n_iter=100), brute_force_entmax(row, alpha))


@pytest.mark.parametrize("fn", [sparsemax, entmax15, lambda z, dim=-1: entmax_bisect(z, 1.3, dim=dim)])
def test_outputs_lie_on_the_simplex_along_any_dim(fn):
    z = torch.randn(4, 9, 5, dtype=torch.float64) * 3
    for dim in (0, 1, -1):
        p = fn(z, dim=dim)
        assert (p >= 0).all()
        torch.testing.assert_close(p.sum(dim=dim), torch.ones_like(p.sum(dim=dim)))


def test_sparsity_and_limits():
    z = torch.tensor([[3.0, 1.0, 0.5, -2.0]], dtype=torch.float64)
    assert (sparsemax(z) == 0).sum() == 3 and (entmax15(z) == 0).sum() >= 1
    torch.testing.assert_close(entmax_bisect(z, 1.0), torch.softmax(z, -1))  # alpha = 1 is softmax
    torch.testing.assert_close(entmax_bisect(z, 1.001, n_iter=100), torch.softmax(z, -1), atol=1e-3, rtol=0)
    torch.testing.assert_close(sparsemax(z + 100), sparsemax(z))  # shift invariance, no overflow
    with pytest.raises(ConfigError, match=r"alpha must lie in \[1, 2\], got 2.5"):
        entmax_bisect(z, 2.5)


def test_gradients_match_finite_differences_including_alpha():
    z = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sparsemax, (z,))
    assert torch.autograd.gradcheck(entmax15, (z,))
    alpha = torch.tensor([1.3, 1.6, 1.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, a: entmax_bisect(t, a, n_iter=100), (z, alpha), atol=1e-6)
    scalar = torch.tensor(1.45, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, a: entmax_bisect(t, a, n_iter=100), (z, scalar), atol=1e-6)


@pytest.mark.parametrize("kind", SEPARATIONS)
def test_conjugate_gradient_is_the_separation(kind):
    """Psi* is convex with gradient Sep: the energy's CCCP update relies on it."""
    z = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(conjugate(z, kind, 1.3).sum(), z)
    torch.testing.assert_close(grad, separate(z.detach(), kind, 1.3), atol=1e-6, rtol=1e-6)


def test_one_dense_step_is_softmax_attention():
    torch.manual_seed(0)
    memories, queries = torch.randn(30, 16), torch.randn(8, 16)
    beta = 0.7
    attention = torch.nn.functional.scaled_dot_product_attention(
        queries[None], memories[None], memories[None], scale=beta)[0]
    torch.testing.assert_close(retrieve(queries, memories, beta=beta), attention, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", SEPARATIONS)
@pytest.mark.parametrize("kernel", [False, True])
def test_energy_never_increases_along_retrieval(kind, kernel):
    generator = torch.Generator().manual_seed(3)
    memories = torch.randn(25, 12, dtype=torch.float64, generator=generator)
    x = memories[:6] + 0.9 * torch.randn(6, 12, dtype=torch.float64, generator=generator)
    weight = torch.randn(20, 12, dtype=torch.float64, generator=generator) / 3
    feature_map = (lambda u: u @ weight.T) if kernel else None
    energies = [energy(x, memories, 0.5, kind, 1.3, feature_map)]
    for _ in range(8):
        x = retrieve(x, memories, 0.5, kind, 1.3, feature_map)
        energies.append(energy(x, memories, 0.5, kind, 1.3, feature_map))
    steps = torch.stack(energies)
    assert (steps[1:] - steps[:-1]).max() <= 1e-9


def test_steps_stop_at_tolerance_and_fixed_points_are_kept():
    memories = torch.eye(4, dtype=torch.float64) * 10
    x = memories[:2] + 0.1
    once = retrieve(x, memories, beta=2.0, kind="sparsemax")
    torch.testing.assert_close(once, memories[:2])  # well separated: one step lands on the memory
    torch.testing.assert_close(retrieve(once, memories, beta=2.0, kind="sparsemax", steps=50, tol=1e-9), memories[:2])
    weights = retrieval_weights(x, memories, beta=2.0, kind="sparsemax")
    assert ((weights > 0).sum(-1) == 1).all()  # metastable states of size one


def test_chunked_features_equal_unchunked_with_gradients():
    torch.manual_seed(1)
    memories, queries = torch.randn(103, 10), torch.randn(7, 10)
    weight = torch.randn(6, 10, requires_grad=True)
    feature_map = lambda u: torch.tanh(u @ weight.T)  # noqa: E731
    full = retrieve(queries, memories, 1.0, "entmax15", feature_map=feature_map, steps=3)
    (grad_full,) = torch.autograd.grad(full.square().sum(), weight)
    chunked = retrieve(queries, memories, 1.0, "entmax15", feature_map=feature_map, steps=3, chunk_size=10)
    (grad_chunked,) = torch.autograd.grad(chunked.square().sum(), weight)
    torch.testing.assert_close(full, chunked)
    torch.testing.assert_close(grad_full, grad_chunked)


def test_bad_input():
    memories = torch.randn(5, 4)
    with pytest.raises(ShapeError, match=r"queries must have shape \[B, 4\] to match memories \[M, 4\], got \[2, 3\]"):
        retrieve(torch.randn(2, 3), memories)
    with pytest.raises(ConfigError, match="beta must be > 0, got 0"):
        retrieve(torch.randn(2, 4), memories, beta=0)
    with pytest.raises(ShapeError, match="non-empty"):
        retrieve(torch.randn(2, 4), torch.empty(0, 4))
    with pytest.raises(ConfigError, match="separation must be one of"):
        retrieve(torch.randn(2, 4), memories, kind="max")
    with pytest.raises(ConfigError, match=r"alpha must lie in \[1, 2\], got 0.5"):
        retrieve(torch.randn(2, 4), memories, kind="entmax", alpha=0.5)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"beta": math.inf}, ConfigError, "beta must be finite (an inverse temperature), got inf"),
    ({"beta": math.nan}, ConfigError, "beta must be > 0, got nan"),
    ({"beta": -math.inf}, ConfigError, "beta must be > 0, got -inf"),
    ({"kind": "entmax", "alpha": math.nan}, ConfigError, "entmax alpha must lie in [1, 2], got nan"),
    ({"kind": "entmax", "alpha": math.inf}, ConfigError, "entmax alpha must lie in [1, 2], got inf"),
    ({"kind": "entmax", "alpha": torch.tensor([1.5, math.nan])}, ConfigError, "entmax alpha must lie in [1, 2]"),
])
def test_non_finite_beta_and_alpha_are_refused(kwargs, error, message):
    queries, memories = torch.randn(2, 4), torch.randn(5, 4)
    with pytest.raises(error) as info:
        retrieve(queries, memories, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
    if "beta" in kwargs:
        with pytest.raises(error, match="beta must be"):
            energy(queries, memories, **kwargs)


@pytest.mark.parametrize("kind", ["sparsemax", "entmax15", "entmax"])
@pytest.mark.parametrize("bad, words", [(math.nan, "NaN"), (math.inf, "+inf")])
def test_non_finite_queries_and_memories_are_named(kind, bad, words):
    queries, memories = torch.randn(3, 4), torch.randn(5, 4)
    queries[1, 2] = bad
    with pytest.raises(ShapeError, match=r"queries must be finite numbers, got NaN or inf in queries of shape \[3, 4\]"):
        retrieve(queries, memories, kind=kind)
    memories[0, 0] = bad
    with pytest.raises(ShapeError, match=r"memories must be finite numbers.*\[5, 4\]"):
        retrieve(torch.randn(3, 4), memories, kind=kind)
    scores = torch.randn(3, 6)
    scores[1, 4] = bad  # straight to the separation function: once "index -1 is out of bounds"
    name = {"entmax": "entmax_bisect"}.get(kind, kind)
    with pytest.raises(ShapeError, match=rf"{name}: scores must be finite numbers .*1 of 3 rows hold {re.escape(words)}"):
        separate(scores, kind)


@pytest.mark.parametrize("fn", [sparsemax, entmax15, lambda z, dim=-1: entmax_bisect(z, 1.3, dim=dim)])
def test_minus_inf_masks_entries_but_not_whole_rows(fn):
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    blocked = torch.zeros(4, 5, dtype=torch.bool)
    blocked[:, 1] = blocked[2, 3] = True
    p = fn(z.masked_fill(blocked, -math.inf))
    assert (p[blocked] == 0).all() and torch.allclose(p.sum(-1), torch.ones(4, dtype=torch.float64))
    (grad,) = torch.autograd.grad((p * torch.arange(5.0, dtype=torch.float64)).sum(), z)
    assert torch.isfinite(grad).all() and (grad[blocked] == 0).all()
    with pytest.raises(ShapeError, match="1 of 4 rows hold all -inf"):
        fn(z.detach().masked_fill(torch.tensor([False, True, False, False])[:, None], -math.inf))


def test_uhop_fit_with_an_infinite_beta_is_one_error_line(tmp_path, capsys):
    """Where the user meets it: `python -m zoo fit` refuses it when it builds the model."""
    from zoo.core.cli import main

    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "configs/hopfield/uhop_digits.yaml", "--model.beta", ".inf",  # YAML infinity
              f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
              "--trainer.max_epochs=1"])
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert lines == ["error: model: beta must be finite (an inverse temperature), got inf"]


def test_separation_loss_equals_its_definition_by_loops():
    from zoo.hopfield.retrieval import LinearFeatureMap, separation_loss

    torch.manual_seed(0)
    memories = torch.randn(6, 5, dtype=torch.float64)
    phi = LinearFeatureMap(5, 8).double()
    features = [f / f.norm() for f in phi(memories)]
    terms = [torch.exp(features[a] @ features[b] / 0.1) for a in range(6) for b in range(a + 1, 6)]
    expected = torch.log(2 / (6 * 5) * torch.stack(terms).sum()) / 6
    torch.testing.assert_close(separation_loss(memories, phi, tau=0.1), expected)
    with pytest.raises(ShapeError, match="at least 2 memories, got 1"):
        separation_loss(memories[:1], phi)


def test_minimizing_the_separation_loss_raises_the_minimum_separation():
    """U-Hop+ Stage I at tiny scale: 100 digits as memories, a linear Phi into 64 dims, full-batch Adam
    (paper settings lr 0.1, tau 0.1)."""
    from sklearn.datasets import load_digits

    from zoo.hopfield.retrieval import LinearFeatureMap, min_separation, separation_loss

    torch.manual_seed(0)
    digits = torch.as_tensor(load_digits().data[:100], dtype=torch.float32) / 16
    phi = LinearFeatureMap(64, 64)
    before = min_separation(digits, phi).item()
    optimizer = torch.optim.Adam(phi.parameters(), lr=0.1)
    for _ in range(200):
        loss = separation_loss(digits, phi, tau=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = min_separation(digits, phi).item()
    assert before < 0.05 and after > 0.3, (before, after)  # from near-duplicates to well separated
    assert separation_loss(digits, phi).item() < separation_loss(digits, None).item()


def test_separation_loss_gradient_reaches_both_operands():
    """The gradient of the loss equals that of its loop definition, which would not hold if one
    side of each pair were detached (a defect of the public code)."""
    from zoo.hopfield.retrieval import LinearFeatureMap, separation_loss

    torch.manual_seed(1)
    memories = torch.randn(5, 4, dtype=torch.float64)
    phi = LinearFeatureMap(4, 6).double()
    separation_loss(memories, phi, tau=0.2).backward()
    fast = phi.weight.grad.clone()
    phi.weight.grad = None
    features = [f / f.norm() for f in phi(memories)]
    terms = [torch.exp(features[a] @ features[b] / 0.2) for a in range(5) for b in range(a + 1, 5)]
    (torch.log(2 / (5 * 4) * torch.stack(terms).sum()) / 5).backward()
    torch.testing.assert_close(fast, phi.weight.grad)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax_bisect"])
@pytest.mark.parametrize("dim", [0, -1])
def test_sparse_maps_match_the_reference_package(name, dim):
    """Outputs and input gradients equal deep-spin's ``entmax`` 1.3 (the reference implementation)."""
    import entmax as reference

    ours = {"sparsemax": sparsemax, "entmax15": entmax15, "entmax_bisect": entmax_bisect}[name]
    torch.manual_seed(2)
    z = (3 * torch.randn(9, 17, dtype=torch.float64)).requires_grad_()
    probe = torch.randn(9, 17, dtype=torch.float64)
    results = []
    for fn in (ours, getattr(reference, name)):
        p = fn(z, dim=dim)
        (grad,) = torch.autograd.grad((p * probe).sum(), z)
        results.append((p, grad))
    tol = 1e-6 if name == "entmax_bisect" else 1e-12
    torch.testing.assert_close(results[0][0], results[1][0], atol=tol, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=10 * tol, rtol=0)


def test_retrieve_can_return_the_last_weights():
    torch.manual_seed(3)
    memories, x = torch.randn(9, 4), torch.randn(5, 4)
    retrieved, weights = retrieve(x, memories, 2.0, "sparsemax", return_weights=True)
    torch.testing.assert_close(weights, retrieval_weights(x, memories, beta=2.0, kind="sparsemax"))
    torch.testing.assert_close(retrieved, weights @ memories)
