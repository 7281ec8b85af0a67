"""Memories as spherical codes: the separation of a point set on the sphere, bounds on the best
separation any M points on S^{D-1} can reach, and codes that reach a known separation
(Hu, Wu, Liu, "Provably Optimal Memory Capacity for Modern Hopfield Models: Transformer-Compatible
Dense Associative Memories as Spherical Codes", NeurIPS 2024).

The paper ties the capacity of the kernelized Hopfield model to the minimum pairwise separation of
the normalized memory features ``phi_mu = Phi(xi_mu) / ||Phi(xi_mu)||``: the larger the smallest
angle, the more memories are stored; an optimal spherical code for (M, D) is the best a feature map
into D dimensions can do. U-Hop+ Stage I (``zoo.hopfield.uhop``) raises that separation. This file
measures it and says how far it could go:

- ``max_cosine`` / ``min_angle``: the largest pairwise cosine s (the zoo's ``min_separation`` is
  ``1 - s``) and the smallest pairwise angle ``arccos s`` of a point set.
- Lower bounds on the max cosine of *every* M-point code in R^D (so upper bounds on its separation),
  each stated exactly with its proof or reference in its docstring: ``simplex_bound`` (all M),
  ``orthoplex_bound`` (Rankin, M >= D + 2), ``levenshtein2_bound`` (Delsarte's linear programming
  bound with a degree-2 polynomial, Levenshtein's L_2; all M) and ``cap_packing_bound`` (disjoint
  caps; all M). ``cosine_bounds`` collects them, ``best_cosine_bound`` takes the largest.
- Codes with a known max cosine (an achievable separation): ``regular_simplex`` (optimal for
  M <= D + 1), ``cross_polytope`` (optimal for D + 2 <= M <= 2D), ``regular_polygon`` (optimal for
  D = 2), and ``repulsion_code`` (best of several annealed max-min optimizations on the sphere, for
  every other (M, D)). ``best_known_code`` picks the right one.

Everything is plain torch (``scipy.special.betainc`` for the cap area) and works in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zoo.core.errors import ConfigError, ShapeError


def _check_size(m: int, dim: int) -> None:
    if m < 2:
        raise ConfigError(f"a code needs m >= 2 points, got m={m}")
    if dim < 2:
        raise ConfigError(f"the sphere S^(dim-1) needs dim >= 2, got dim={dim}")


# -- the separation of a point set ------------------------------------------------------------------
def max_cosine(points: Tensor) -> Tensor:
    """The largest cosine between two distinct rows of ``points [M, D]`` (M >= 2, rows nonzero;
    each row is normalized first). Lower is better separated: -1/(M-1) at best (``simplex_bound``)."""
    if points.dim() != 2 or len(points) < 2:
        raise ShapeError(f"points must be an [M >= 2, D] matrix, got shape {list(points.shape)}")
    norms = points.norm(dim=-1)
    if not bool((norms > 0).all() & torch.isfinite(norms).all()):
        raise ShapeError(f"points must be finite nonzero rows, got {int((norms == 0).sum())} zero or non-finite rows")
    unit = points / norms[:, None]
    cosines = unit @ unit.T
    cosines.diagonal().fill_(-math.inf)
    return cosines.max().clamp(-1, 1)


def min_angle(points: Tensor) -> Tensor:
    """The smallest angle (radians) between two distinct rows of ``points [M, D]``: ``arccos max_cosine``."""
    return torch.arccos(max_cosine(points))


# -- bounds: no M-point code in R^D has a max cosine below these --------------------------------------
def simplex_bound(m: int, dim: int) -> float:
    """``s >= -1/(M-1)`` for every M points on S^{D-1} (Rankin 1955): ``0 <= ||sum x||^2 = M + sum_{i != j}
    <x_i, x_j> <= M + M(M-1) s``. Equality for the regular simplex, which exists iff M <= D + 1."""
    _check_size(m, dim)
    return -1.0 / (m - 1)


def orthoplex_bound(m: int, dim: int) -> float:
    """``s >= 0`` once M >= D + 2 (Rankin 1955): D + 2 vectors in R^D cannot have pairwise negative
    inner products. Equality for M <= 2D (vertices of the cross-polytope). ``-1`` (no information)
    for M <= D + 1."""
    _check_size(m, dim)
    return 0.0 if m >= dim + 2 else -1.0


def levenshtein2_bound(m: int, dim: int) -> float:
    """``s >= (M - 2D) / (D (M - 2))`` for every M >= 3 points on S^{D-1}: Delsarte's linear programming
    bound (Delsarte, Goethals, Seidel 1977) with ``f(t) = (t + 1)(t - s)``, which is Levenshtein's
    L_2 (``M <= 2D(1 - s) / (1 - Ds)`` for s < 1/D; Levenshtein 1992, Handbook of Coding Theory 1998).

    Proof: ``f = (t^2 - 1/D) + (1 - s) t + (1/D - s)`` has nonnegative coefficients on the first
    two Gegenbauer polynomials, whose sums over a code are ``||sum x||^2 >= 0`` and
    ``||sum x x^T||_F^2 - M^2/D >= 0``; so ``sum_{x,y} f(<x,y>) >= (1/D - s) M^2``. Every
    off-diagonal term has ``<x,y> in [-1, s]`` where ``f <= 0``, so the sum is ``<= M f(1) = 2M(1 - s)``.
    Beats ``orthoplex_bound`` for M > 2D (it tends to 1/D as M grows); ``-1`` for M = 2."""
    _check_size(m, dim)
    return -1.0 if m == 2 else (m - 2 * dim) / (dim * (m - 2))


def cap_fraction(radius: float, dim: int) -> float:
    """Normalized surface measure of a cap of angular radius ``radius`` in [0, pi] on S^{dim-1}:
    ``1/2 I_{sin^2 r}((dim-1)/2, 1/2)`` for r <= pi/2 (regularized incomplete beta; S. Li 2011),
    ``1 -`` that of ``pi - r`` above. Equals ``int_0^r sin^{dim-2} t dt / int_0^pi sin^{dim-2} t dt``."""
    from scipy.special import betainc

    if dim < 2:
        raise ConfigError(f"the sphere S^(dim-1) needs dim >= 2, got dim={dim}")
    if not 0 <= radius <= math.pi:
        raise ConfigError(f"a cap's angular radius must lie in [0, pi], got {radius}")
    if radius > math.pi / 2:
        return 1.0 - cap_fraction(math.pi - radius, dim)
    return 0.5 * float(betainc((dim - 1) / 2, 0.5, math.sin(radius) ** 2))


def cap_packing_bound(m: int, dim: int) -> float:
    """``s >= cos(2 r)`` with ``cap_fraction(r, D) = 1/M``: the open caps of angular radius
    (min angle)/2 around the points are disjoint, so M of them fit in the sphere (the plain
    area bound; Rankin 1955 sharpens it for small caps, not used here). Exact for D = 2
    (the regular polygon); weaker than ``levenshtein2_bound`` for M just above 2D, stronger for large M."""
    _check_size(m, dim)
    lo, hi = 0.0, math.pi / 2  # cap_fraction increases from 0 to 1/2 on [0, pi/2]; 1/M <= 1/2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cap_fraction(mid, dim) < 1.0 / m else (lo, mid)
    return math.cos(2 * hi)


BOUNDS = {"simplex": simplex_bound, "orthoplex": orthoplex_bound, "levenshtein2": levenshtein2_bound,
          "cap_packing": cap_packing_bound}


def cosine_bounds(m: int, dim: int) -> dict[str, float]:
    """Every bound above for (M, D): no M-point code in R^D has a max cosine below any of them."""
    return {name: bound(m, dim) for name, bound in BOUNDS.items()}


def best_cosine_bound(m: int, dim: int) -> float:
    """The largest of ``cosine_bounds``: the best max cosine (M, D) could possibly reach."""
    return max(cosine_bounds(m, dim).values())


# -- codes whose max cosine is known ------------------------------------------------------------------
def regular_simplex(m: int, dim: int | None = None) -> Tensor:
    """M unit vectors with pairwise cosine exactly -1/(M-1) (optimal), in R^dim (dim >= M - 1;
    default max(M - 1, 2)): the centred standard basis of R^M in an orthonormal basis of its span."""
    dim = max(m - 1, 2) if dim is None else dim
    _check_size(m, dim)
    if dim < m - 1:
        raise ConfigError(f"a regular simplex of m={m} points needs dim >= {m - 1}, got dim={dim}")
    centred = torch.eye(m, dtype=torch.float64) - 1.0 / m
    basis = torch.linalg.svd(centred).U[:, : m - 1]  # orthonormal basis of the sum-zero hyperplane
    points = torch.nn.functional.normalize(centred @ basis, dim=-1)
    return torch.nn.functional.pad(points, (0, dim - (m - 1)))


def cross_polytope(m: int, dim: int) -> Tensor:
    """M <= 2D of the vectors ``+-e_i`` (``e_1, -e_1, e_2, -e_2, ...``): max cosine 0 for M >= 3,
    optimal for D + 2 <= M <= 2D (``orthoplex_bound``)."""
    _check_size(m, dim)
    if m > 2 * dim:
        raise ConfigError(f"the cross-polytope in dim={dim} has {2 * dim} vertices, got m={m}")
    eye = torch.eye(dim, dtype=torch.float64)
    return torch.stack([eye, -eye], dim=1).reshape(2 * dim, dim)[:m]


def regular_polygon(m: int) -> Tensor:
    """M equally spaced unit vectors in R^2: min angle 2 pi / M, optimal on the circle."""
    _check_size(m, 2)
    angles = 2 * math.pi * torch.arange(m, dtype=torch.float64) / m
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def repulsion_code(m: int, dim: int, restarts: int = 4, steps: int = 1500, seed: int = 0,
                   tau: tuple[float, float] = (0.05, 5e-4), lr: tuple[float, float] = (0.02, 5e-4)) -> Tensor:
    """Best (lowest max cosine) of ``restarts`` runs of annealed max-min optimization on S^{dim-1}:
    Adam on ``tau log sum_{i<j} exp(<x_i, x_j> / tau)`` (a smooth max of the pairwise cosines),
    points renormalized after every step, tau and the step size decayed geometrically from their
    first to their second value. A constructive upper bound on the optimal max cosine (float64)."""
    _check_size(m, dim)
    if restarts < 1 or steps < 2:
        raise ConfigError(f"repulsion_code needs restarts >= 1 and steps >= 2, got {restarts} and {steps}")
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.triu_indices(m, m, offset=1)
    best, best_cos = None, math.inf
    for _ in range(restarts):
        points = torch.nn.functional.normalize(torch.randn(m, dim, generator=generator, dtype=torch.float64), dim=-1)
        points.requires_grad_(True)
        optimizer = torch.optim.Adam([points], lr=lr[0])
        for step in range(steps):
            frac = step / (steps - 1)
            t = tau[0] * (tau[1] / tau[0]) ** frac
            for group in optimizer.param_groups:
                group["lr"] = lr[0] * (lr[1] / lr[0]) ** frac
            unit = torch.nn.functional.normalize(points, dim=-1)
            loss = t * torch.logsumexp((unit @ unit.T)[rows, cols] / t, dim=0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                points.copy_(torch.nn.functional.normalize(points, dim=-1))
        candidate = points.detach()
        cos = max_cosine(candidate).item()
        if cos < best_cos:
            best, best_cos = candidate, cos
    return best


def best_known_code(m: int, dim: int, **repulsion) -> tuple[Tensor, str]:
    """A code for (M, D) and its name: the optimal construction where one is known (``simplex`` for
    M <= D + 1, ``cross_polytope`` for M <= 2D, ``polygon`` for D = 2), else ``repulsion_code``
    (keyword arguments go to it)."""
    _check_size(m, dim)
    if m <= dim + 1:
        return regular_simplex(m, dim), "simplex"
    if m <= 2 * dim:
        return cross_polytope(m, dim), "cross_polytope"
    if dim == 2:
        return regular_polygon(m), "polygon"
    return repulsion_code(m, dim, **repulsion), "repulsion"
