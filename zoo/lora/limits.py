"""The LoRA gradient of one attention layer, exact and in almost-linear time (Hu, Su, Kuo, Song, Liu,
2024, "Computational Limits of Low-Rank Adaptation (LoRA) for Transformer-Based Models", Secs. 3-5).

Setting (the paper's, as its abstract states it; the objective and the chain of terms below are
derived here by matrix calculus because the paper's text was not reachable from this machine):
one attention head on ``X [L, d]`` with target ``Y [L, d]``, weights ``W [d, d]`` acting on the
right (``Q = X W_Q``; ``W`` is the transpose of an ``nn.Linear`` weight), LoRA updates::

    W = W* + (alpha / r) B A,   B [d, r], A [r, d]      on W_Q, W_V ("partial") or W_Q, W_K, W_V ("full")

    loss = 1/2 || D^{-1} exp(s X W_Q W_K^T X^T) X W_V - Y ||_F^2,   D = diag(exp(s ...) 1),  s = 1/sqrt(d)

Exact gradient (:func:`lora_gradient`), with ``P = D^{-1} exp(s Q K^T)``, ``O = P V``,
``R = O - Y`` and ``delta_i = <R_i, O_i>``::

    dL/dW_V = X^T P^T R
    dL/dW_Q = s X^T [ (P o R V^T) K - delta o (P K) ]            (o: entrywise; delta scales rows)
    dL/dW_K = s X^T [ (P o R V^T)^T Q - P^T (delta o Q) ]
    dL/dA   = (alpha / r) B^T dL/dW,     dL/dB = (alpha / r) dL/dW A^T

Every L x L object enters only through four products with an ``[L, m]`` matrix M:
``P M``, ``P^T M``, ``(P o R V^T) M`` and ``(P o R V^T)^T M``. The approximation
(:func:`approx_lora_gradient`) replaces ``P`` by ``U~ W^T`` with ``U = phi(Q s^{1/2})``,
``W = phi(K s^{1/2})`` from :mod:`zoo.nn.fast_attention` and ``U~ = D~^{-1} U``, ``D~ = diag(U W^T 1)``
(degree-g Taylor features, rank ``F = C(d+g, g)``), and chains the low-rank factors through the
terms: ``P M = U~ (W^T M)``, ``P^T M = W (U~^T M)``, and the Hadamard product of two low-rank
matrices is low rank (row-wise Kronecker products of the factors)::

    [(P o R V^T) M]_i   = sum_{f,a} U~_if R_ia  [W^T (V (x) M)]_{f,(a,b)}
    [(P o R V^T)^T M]_j = sum_{f,a} W_jf  V_ja  [U~^T (R (x) M)]_{f,(a,b)}

with ``(V (x) M)_j = vec(v_j m_j^T)``. The whole gradient then costs ``O(L F d^2)`` time and
``O(L F)`` memory, linear in L for fixed d and g, where the exact one costs ``O(L^2 d)``.

The norm threshold (paper, Sec. 5, as its abstract states it): with norms of ``X W*`` and
``X alpha B A / r`` bounded below a shared threshold (the ``sqrt(log L)`` scale of Alman & Song's
bounded entries), the LoRA gradient has an almost-linear-time approximation; above it no
sub-quadratic algorithm exists under SETH. Here the entries of ``s Q K^T`` set the Taylor error:
see :func:`zoo.nn.fast_attention.taylor_error_bound` and ``benchmarks/lora/limits.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from zoo.core.errors import ConfigError, ShapeError
from zoo.nn.fast_attention import taylor_features

ADAPTATIONS = {"partial": ("q", "v"), "full": ("q", "k", "v")}


@dataclass(frozen=True)
class LoRAProblem:
    """One attention layer with LoRA adapters (module docstring).

    ``w_star`` maps "q", "k", "v" to ``[d, d]``; ``adapters`` maps the adapted ones to
    ``(A [r, d], B [d, r])``; ``scale`` is s (default ``1 / sqrt(d)``).
    """

    x: Tensor
    y: Tensor
    w_star: dict[str, Tensor]
    adapters: dict[str, tuple[Tensor, Tensor]]
    alpha: float = 1.0
    scale: float | None = None

    def __post_init__(self) -> None:
        d = self.x.shape[1] if self.x.dim() == 2 else None
        if d is None or self.y.shape != self.x.shape:
            raise ShapeError(f"x and y must both be [L, d], got {tuple(self.x.shape)} and {tuple(self.y.shape)}")
        for name in ("q", "k", "v"):
            if name not in self.w_star or self.w_star[name].shape != (d, d):
                got = tuple(self.w_star[name].shape) if name in self.w_star else "missing"
                raise ShapeError(f"w_star[{name!r}] must be [{d}, {d}], got {got}")
        for name, (a, b) in self.adapters.items():
            if name not in ("q", "k", "v"):
                raise ConfigError(f"adapter {name!r} is not one of 'q', 'k', 'v'")
            if a.dim() != 2 or a.shape[1] != d or b.shape != (d, a.shape[0]):
                raise ShapeError(f"adapter {name!r} must be A [r, {d}], B [{d}, r], got "
                                 f"{tuple(a.shape)}, {tuple(b.shape)}")

    @property
    def s(self) -> float:
        return self.x.shape[1] ** -0.5 if self.scale is None else self.scale

    def weights(self) -> dict[str, Tensor]:
        """``W = W* + (alpha / r) B A`` for each of q, k, v (W* alone where not adapted)."""
        out = dict(self.w_star)
        for name, (a, b) in self.adapters.items():
            out[name] = out[name] + self.alpha / a.shape[0] * b @ a
        return out

    def projections(self) -> tuple[Tensor, Tensor, Tensor]:
        w = self.weights()
        return self.x @ w["q"], self.x @ w["k"], self.x @ w["v"]

    def max_score(self) -> float:
        """``max_ij |s q_i^T k_j|`` (materializes the L x L scores)."""
        q, k, _ = self.projections()
        return float((self.s * q @ k.T).abs().max())

    def scaled(self, factor: float) -> LoRAProblem:
        """X, W* and the adapters' B times ``factor``: scores grow by ``factor^4``."""
        return replace(self, x=self.x * factor, w_star={n: w * factor for n, w in self.w_star.items()},
                       adapters={n: (a, b * factor) for n, (a, b) in self.adapters.items()})


def random_problem(length: int, dim: int, rank: int = 2, adaptation: str = "partial", alpha: float = 1.0,
                   seed: int = 0, dtype: torch.dtype = torch.float64) -> LoRAProblem:
    """Gaussian X, Y, W* (entries of variance 1/d) and adapters with B != 0, so every gradient is nonzero."""
    if adaptation not in ADAPTATIONS:
        raise ConfigError(f"adaptation must be one of {sorted(ADAPTATIONS)}, got {adaptation!r}")
    if rank < 1:
        raise ConfigError(f"rank must be >= 1, got {rank}")
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    w_star = {n: randn(dim, dim) / math.sqrt(dim) for n in ("q", "k", "v")}
    adapters = {n: (randn(rank, dim) / math.sqrt(dim), randn(dim, rank) / math.sqrt(rank))
                for n in ADAPTATIONS[adaptation]}
    return LoRAProblem(randn(length, dim), randn(length, dim), w_star, adapters, alpha)


def lora_loss(problem: LoRAProblem) -> Tensor:
    """``1/2 || softmax(s Q K^T) V - Y ||_F^2`` (differentiable; the autograd reference)."""
    q, k, v = problem.projections()
    return 0.5 * ((problem.s * q @ k.T).softmax(dim=-1) @ v - problem.y).pow(2).sum()


class _ExactProducts:
    """The four products with ``P`` materialized (L x L)."""

    def __init__(self, q: Tensor, k: Tensor, s: float) -> None:
        self.p = (s * q @ k.T).softmax(dim=-1)

    def mul(self, m: Tensor) -> Tensor:
        return self.p @ m

    def mul_t(self, m: Tensor) -> Tensor:
        return self.p.T @ m

    def hadamard(self, r: Tensor, v: Tensor, m: Tensor) -> Tensor:
        return (self.p * (r @ v.T)) @ m

    def hadamard_t(self, r: Tensor, v: Tensor, m: Tensor) -> Tensor:
        return (self.p * (r @ v.T)).T @ m


def _row_kron(a: Tensor, b: Tensor) -> Tensor:
    """Row i -> ``vec(a_i b_i^T)``: ``[L, p], [L, q] -> [L, p q]``."""
    return (a[:, :, None] * b[:, None, :]).reshape(a.shape[0], -1)


class _PolynomialProducts:
    """The four products through ``P ~ U~ W^T`` (module docstring), never forming an L x L matrix."""

    def __init__(self, q: Tensor, k: Tensor, s: float, degree: int) -> None:
        u, self.w = taylor_features(q * s**0.5, degree), taylor_features(k * s**0.5, degree)
        self.u = u / (u @ self.w.sum(dim=0))[:, None]

    def mul(self, m: Tensor) -> Tensor:
        return self.u @ (self.w.T @ m)

    def mul_t(self, m: Tensor) -> Tensor:
        return self.w @ (self.u.T @ m)

    def hadamard(self, r: Tensor, v: Tensor, m: Tensor) -> Tensor:
        inner = (self.u @ (self.w.T @ _row_kron(v, m))).view(r.shape[0], r.shape[1], m.shape[1])
        return torch.einsum("ia,iab->ib", r, inner)

    def hadamard_t(self, r: Tensor, v: Tensor, m: Tensor) -> Tensor:
        inner = (self.w @ (self.u.T @ _row_kron(r, m))).view(v.shape[0], v.shape[1], m.shape[1])
        return torch.einsum("ja,jab->jb", v, inner)


def _gradient(problem: LoRAProblem, products) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """The chain of terms of the module docstring, through ``products``' four operations."""
    x, s = problem.x, problem.s
    q, k, v = problem.projections()
    p = products(q, k, s)
    o = p.mul(v)
    r = o - problem.y
    delta = (r * o).sum(dim=1, keepdim=True)
    terms = {"v": lambda: p.mul_t(r),
             "q": lambda: s * (p.hadamard(r, v, k) - delta * p.mul(k)),
             "k": lambda: s * (p.hadamard_t(r, v, q) - p.mul_t(delta * q))}
    grads = {}
    for name, (a, b) in problem.adapters.items():
        dw = x.T @ terms[name]()
        c = problem.alpha / a.shape[0]
        grads[name] = (c * b.T @ dw, c * dw @ a.T)
    return 0.5 * r.pow(2).sum(), grads


def lora_gradient(problem: LoRAProblem) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """Loss and exact ``(dL/dA, dL/dB)`` per adapter, by hand (module docstring); O(L^2 d)."""
    return _gradient(problem, _ExactProducts)


def approx_lora_gradient(problem: LoRAProblem, degree: int) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """Loss and ``(dL/dA, dL/dB)`` with ``exp(s Q K^T)`` replaced by its degree-g polynomial
    factorization chained through every term (module docstring); O(L C(d+g, g) d^2)."""
    if not isinstance(degree, int) or degree < 1:
        raise ConfigError(f"degree must be an integer >= 1, got {degree!r}")
    return _gradient(problem, lambda q, k, s: _PolynomialProducts(q, k, s, degree))


def relative_error(approx: dict[str, tuple[Tensor, Tensor]], exact: dict[str, tuple[Tensor, Tensor]]) -> float:
    """``|| g~ - g ||_F / || g ||_F`` over all adapter gradients stacked."""
    num = sum(float((ga - ge).pow(2).sum()) for n in exact for ga, ge in zip(approx[n], exact[n]))
    den = sum(float(ge.pow(2).sum()) for n in exact for ge in exact[n])
    return math.sqrt(num / den)
