"""Spherical codes (``zoo.hopfield.capacity``): the separation of a point set against a loop, every
bound against the exactly known optimal codes (simplex, cross-polytope, tetrahedron, octahedron,
icosahedron, regular polygons) and against brute force over many codes, the cap area against
quadrature, and the repulsion optimizer against the known optima."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from zoo.core.errors import ConfigError, ShapeError
from zoo.hopfield.capacity import (
    best_cosine_bound,
    best_known_code,
    cap_fraction,
    cap_packing_bound,
    cosine_bounds,
    cross_polytope,
    levenshtein2_bound,
    max_cosine,
    min_angle,
    orthoplex_bound,
    regular_polygon,
    regular_simplex,
    repulsion_code,
    simplex_bound,
)

pytestmark = pytest.mark.usefixtures("one_thread")

GOLDEN = (1 + math.sqrt(5)) / 2


def loop_max_cosine(points: torch.Tensor) -> float:
    """The largest cosine over every pair i < j, one pair at a time, in fp64."""
    rows = [[float(v) for v in row] for row in points]
    best = -math.inf
    for a, b in itertools.combinations(rows, 2):
        dot = sum(x * y for x, y in zip(a, b))
        best = max(best, dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)))
    return best


def tetrahedron() -> torch.Tensor:
    return torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)


def octahedron() -> torch.Tensor:
    eye = torch.eye(3, dtype=torch.float64)
    return torch.cat([eye, -eye])


def icosahedron() -> torch.Tensor:
    """The 12 vertices: cyclic permutations of (0, +-1, +-phi); optimal max cosine 1/sqrt(5) (Tammes, M = 12)."""
    vertices = []
    for s1, s2 in itertools.product((1, -1), repeat=2):
        v = (0.0, s1 * 1.0, s2 * GOLDEN)
        vertices += [v, (v[1], v[2], v[0]), (v[2], v[0], v[1])]
    return torch.tensor(vertices, dtype=torch.float64)


def test_max_cosine_equals_a_loop_over_pairs():
    generator = torch.Generator().manual_seed(0)
    for m, d in [(2, 2), (5, 3), (17, 8), (40, 5)]:
        points = torch.randn(m, d, generator=generator, dtype=torch.float64) * torch.rand(m, 1, generator=generator)
        assert max_cosine(points).item() == pytest.approx(loop_max_cosine(points), abs=1e-12)
        assert min_angle(points).item() == pytest.approx(math.acos(loop_max_cosine(points)), abs=1e-7)
    duplicate = torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.0, 1.0]], dtype=torch.float64)
    assert max_cosine(duplicate).item() == pytest.approx(1.0) and min_angle(duplicate).item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("code, cosine, tight", [
    (tetrahedron(), -1 / 3, ("simplex", "levenshtein2")), (octahedron(), 0.0, ("orthoplex", "levenshtein2")),
    (icosahedron(), 1 / math.sqrt(5), ()),
])
def test_platonic_codes_have_their_known_separation_and_respect_every_bound(code, cosine, tight):
    m, d = code.shape
    assert max_cosine(code).item() == pytest.approx(cosine, abs=1e-12)
    for name, bound in cosine_bounds(m, d).items():
        assert bound <= cosine + 1e-12, name
        if name in tight:
            assert bound == pytest.approx(cosine, abs=1e-12), name


@pytest.mark.parametrize("d", [2, 3, 4, 6, 9])
def test_simplex_and_cross_polytope_meet_their_bounds(d):
    simplex = regular_simplex(d + 1, d)
    assert simplex.shape == (d + 1, d)
    torch.testing.assert_close(simplex.norm(dim=-1), torch.ones(d + 1, dtype=torch.float64))
    gram = simplex @ simplex.T
    off = gram[~torch.eye(d + 1, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, -1 / d))  # every pair at the same angle
    assert max_cosine(simplex).item() == pytest.approx(simplex_bound(d + 1, d), abs=1e-12)
    assert levenshtein2_bound(d + 1, d) == pytest.approx(-1 / d, abs=1e-12)  # L_2 is also tight at M = D + 1
    for m in range(d + 2, 2 * d + 1):
        cross = cross_polytope(m, d)
        assert max_cosine(cross).item() == 0.0 == orthoplex_bound(m, d)
    assert levenshtein2_bound(2 * d, d) == 0.0 and cross_polytope(2 * d, d).abs().sum().item() == 2 * d
    assert max_cosine(regular_simplex(4, 7)).item() == pytest.approx(-1 / 3, abs=1e-12)  # padded into more dims


@pytest.mark.parametrize("m", [3, 4, 5, 7, 12, 30])
def test_cap_packing_is_exact_on_the_circle(m):
    polygon = regular_polygon(m)
    assert max_cosine(polygon).item() == pytest.approx(math.cos(2 * math.pi / m), abs=1e-12)
    assert cap_packing_bound(m, 2) == pytest.approx(math.cos(2 * math.pi / m), abs=1e-9)
    assert best_cosine_bound(m, 2) == pytest.approx(max_cosine(polygon).item(), abs=1e-9)


def quadrature_cap_fraction(radius: float, dim: int, steps: int = 20000) -> float:
    """``int_0^r sin^{dim-2} / int_0^pi sin^{dim-2}`` by composite Simpson sums written as loops (fp64)."""
    def integral(upper: float) -> float:
        h = upper / steps
        total = 0.0
        for k in range(steps + 1):
            weight = 1 if k in (0, steps) else (4 if k % 2 else 2)
            total += weight * math.sin(k * h) ** (dim - 2)
        return total * h / 3
    return integral(radius) / integral(math.pi)


@pytest.mark.parametrize("dim", [2, 3, 4, 7, 20])
def test_cap_fraction_equals_quadrature(dim):
    for radius in (0.05, 0.4, 1.0, math.pi / 2, 2.3, math.pi):
        assert cap_fraction(radius, dim) == pytest.approx(quadrature_cap_fraction(radius, dim), rel=1e-7, abs=1e-12)
    assert cap_fraction(0.7, 3) == pytest.approx((1 - math.cos(0.7)) / 2, abs=1e-14)  # Archimedes
    assert cap_fraction(0.7, 2) == pytest.approx(0.7 / math.pi, abs=1e-14)


def test_levenshtein_proof_ingredients_hold_on_random_codes():
    """The two Gegenbauer sums of ``levenshtein2_bound``'s proof are nonnegative, and the bound follows
    from them: ``sum_{x,y} (t+1)(t-s) >= (1/D - s) M^2`` with s the code's own max cosine."""
    generator = torch.Generator().manual_seed(1)
    for m, d in [(5, 2), (9, 3), (30, 4), (50, 10)]:
        x = torch.nn.functional.normalize(torch.randn(m, d, generator=generator, dtype=torch.float64), dim=-1)
        sum1, sum2, total = 0.0, 0.0, 0.0
        s = loop_max_cosine(x)
        for i in range(m):
            for j in range(m):
                t = float(x[i] @ x[j])
                sum1 += t
                sum2 += t * t - 1 / d
                total += (t + 1) * (t - s)
        assert sum1 >= -1e-9 and sum2 >= -1e-9
        if s < 1 / d:
            assert total >= (1 / d - s) * m * m - 1e-9
            assert m <= 2 * d * (1 - s) / (1 - d * s) + 1e-9


def test_no_code_beats_any_bound():
    """Brute force: random codes, best-of-many random codes and optimized codes never have a max cosine
    below a bound, for every (M, D) tried."""
    generator = torch.Generator().manual_seed(2)
    for m, d in [(3, 2), (5, 3), (8, 3), (13, 3), (10, 4), (20, 5), (40, 6), (7, 6), (100, 8)]:
        bound = best_cosine_bound(m, d)
        random = torch.randn(200, m, d, generator=generator, dtype=torch.float64)
        best_random = min(max_cosine(code).item() for code in random)
        optimized = max_cosine(repulsion_code(m, d, restarts=1, steps=300, seed=m)).item()
        assert bound <= optimized + 1e-9 and bound <= best_random
        assert optimized <= best_random + 1e-9  # the optimizer beats luck


@pytest.mark.parametrize("code", [  # two in the default suite (its time budget), all four under -m slow
    tetrahedron(), pytest.param(octahedron(), marks=pytest.mark.slow), icosahedron(),
    pytest.param(regular_polygon(5), marks=pytest.mark.slow)])
def test_repulsion_finds_the_known_optimum(code):
    m, d = code.shape
    found = repulsion_code(m, d, restarts=2, steps=600, seed=0)
    assert found.shape == (m, d) and found.dtype == torch.float64
    torch.testing.assert_close(found.norm(dim=-1), torch.ones(m, dtype=torch.float64))
    assert max_cosine(found).item() == pytest.approx(max_cosine(code).item(), abs=1e-5)
    torch.testing.assert_close(found, repulsion_code(m, d, restarts=2, steps=600, seed=0))  # seeded


def test_best_known_code_uses_the_exact_constructions():
    assert best_known_code(4, 3)[1] == "simplex"
    assert best_known_code(6, 3)[1] == "cross_polytope"
    code, name = best_known_code(9, 2)
    assert name == "polygon" and max_cosine(code).item() == pytest.approx(math.cos(2 * math.pi / 9))
    code, name = best_known_code(12, 3, restarts=1, steps=300)
    assert name == "repulsion" and code.shape == (12, 3)


@pytest.mark.parametrize("call, message", [
    (lambda: max_cosine(torch.ones(1, 3)), r"points must be an \[M >= 2, D\] matrix, got shape \[1, 3\]"),
    (lambda: max_cosine(torch.ones(4)), r"got shape \[4\]"),
    (lambda: max_cosine(torch.tensor([[1.0, 0.0], [0.0, 0.0]])), "got 1 zero or non-finite rows"),
    (lambda: simplex_bound(1, 3), "m >= 2 points, got m=1"),
    (lambda: cap_packing_bound(5, 1), "dim >= 2, got dim=1"),
    (lambda: cap_fraction(4.0, 3), r"\[0, pi\], got 4.0"),
    (lambda: cross_polytope(7, 3), "has 6 vertices, got m=7"),
    (lambda: regular_simplex(5, 3), "needs dim >= 4, got dim=3"),
    (lambda: repulsion_code(5, 3, restarts=0), "restarts >= 1 and steps >= 2, got 0 and 1500"),
])
def test_bad_input(call, message):
    with pytest.raises((ConfigError, ShapeError), match=message):
        call()
