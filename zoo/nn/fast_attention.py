"""Fast attention by the polynomial method (Alman & Song, 2023, "Fast Attention Requires Bounded
Entries"): ``softmax(Q K^T / sqrt(d)) V`` in time linear in the sequence length L.

Replace ``exp(x)`` by its degree-g Taylor polynomial ``T_g(x) = sum_{j<=g} x^j / j!``. For
``x = <q, k>`` the polynomial factors through an explicit feature map::

    T_g(<q, k>) = phi(q)^T phi(k),   phi(x)_a = x^a / sqrt(a!)   for all multi-indices |a| <= g

(the multinomial theorem: ``sum_{|a|=j} q^a k^a / a! = <q, k>^j / j!``). ``phi`` is the
symmetric-tensor form of ``[x^{(x)0}, x^{(x)1} / sqrt(1!), ..., x^{(x)g} / sqrt(g!)]``: it keeps one
coordinate per monomial, ``F = C(d + g, g)`` of them instead of ``sum_j d^j``. With
``U = phi(Q s^{1/2})`` and ``W = phi(K s^{1/2})`` (``s = 1 / sqrt(d)``) the L x L matrix
``exp(s Q K^T)`` is approximated by the rank-F product ``U W^T``, so::

    exp(s Q K^T) V ~ U (W^T V),   normalizer exp(s Q K^T) 1 ~ U (W^T 1)

cost O(L F d) time and O(L F) memory instead of O(L^2 d). The causal version keeps the running
sums ``sum_{j<=i} phi(k_j) v_j^T`` over blocks of keys (:func:`fast_attention`, ``causal=True``).

Error bound used by the fallback (derived here from Taylor's theorem, the elementary form of the
paper's polynomial approximation): for ``|x| <= B``, ``|e^x - T_g(x)| <= B^{g+1} / (g+1)! e^B``, so
relative to ``e^x >= e^{-B}`` every entry of ``exp(s Q K^T)`` is reproduced to relative error
``eps <= B^{g+1} / (g+1)! e^{2B}`` (:func:`taylor_error_bound`), and the attention weights
(entries divided by their row sum) to about ``2 eps``. ``B`` is bounded cheaply by Cauchy-Schwarz,
``max_ij |s q_i^T k_j| <= s max_i |q_i| max_j |k_j|`` (:func:`entry_bound`). Keeping the error small
at fixed degree needs ``B = O(1)``; Alman & Song show that entries ``B = o(sqrt(log L))`` (their
``Q, K`` in ``[-B, B]``, scores ``Q K^T / d``) allow a degree with ``F = L^{o(1)}`` and so almost
linear time, while at ``B = Theta(sqrt(log L))`` no truly sub-quadratic algorithm exists under SETH.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Literal

import torch
from torch import Tensor

from zoo.core.errors import ConfigError, ShapeError

DEFAULT_TOLERANCE = 1e-3


@functools.lru_cache(maxsize=32)
def _monomials(dim: int, degree: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """For degrees 1..g: (parent column in the degree j-1 block, variable multiplied in,
    coefficient ratio 1 / sqrt(m)) where m is the new multiplicity of that variable, so that the
    running coefficient is ``1 / sqrt(a!)``. Monomials are sorted index tuples ``i_1 <= ... <= i_j``."""
    tables = []
    previous = {(): 0}
    for j in range(1, degree + 1):
        parents, variables, ratios, current = [], [], [], {}
        for idx in itertools.combinations_with_replacement(range(dim), j):
            parents.append(previous[idx[:-1]])
            variables.append(idx[-1])
            ratios.append(1.0 / math.sqrt(idx.count(idx[-1])))
            current[idx] = len(current)
        tables.append((torch.tensor(parents), torch.tensor(variables), torch.tensor(ratios, dtype=torch.float64)))
        previous = current
    return tables


def feature_dim(dim: int, degree: int) -> int:
    """``F = C(d + g, g)``: the number of monomials of degree <= g in d variables."""
    return math.comb(dim + degree, degree)


def taylor_features(x: Tensor, degree: int) -> Tensor:
    """``phi(x)`` of the module docstring: ``[..., d] -> [..., C(d + g, g)]`` with
    ``phi(x)^T phi(y) = sum_{j<=g} <x, y>^j / j!`` exactly."""
    if degree < 0:
        raise ConfigError(f"degree must be >= 0, got {degree}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ShapeError(f"taylor_features expects [..., d] with d >= 1, got shape {tuple(x.shape)}")
    block = x.new_ones(*x.shape[:-1], 1)
    blocks = [block]
    coef = x.new_ones(1)
    for parents, variables, ratios in _monomials(x.shape[-1], degree):
        parents, variables = parents.to(x.device), variables.to(x.device)
        coef = coef[parents] * ratios.to(x)
        block = block[..., parents] * x[..., variables]
        blocks.append(block * coef)
    return torch.cat(blocks, dim=-1)


def entry_bound(q: Tensor, k: Tensor, scale: float | None = None) -> float:
    """Cheap upper bound ``s max_i |q_i| max_j |k_j| >= max_ij |s q_i^T k_j|`` (Cauchy-Schwarz)."""
    s = q.shape[-1] ** -0.5 if scale is None else scale
    return float(s * q.norm(dim=-1).max() * k.norm(dim=-1).max())


def taylor_error_bound(bound: float, degree: int) -> float:
    """Relative error bound ``B^{g+1} / (g+1)! e^{2B}`` of ``T_g`` on entries ``|x| <= B``."""
    return math.exp((degree + 1) * math.log(max(bound, 1e-300)) - math.lgamma(degree + 2) + 2 * bound)


def exact_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None) -> Tensor:
    """``softmax(s Q K^T [+ causal mask]) V``, materializing the L x L scores (the reference)."""
    s = q.shape[-1] ** -0.5 if scale is None else scale
    scores = s * q @ k.transpose(-2, -1)
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def _check(q: Tensor, k: Tensor, v: Tensor, degree: int, causal: bool, exact_fallback) -> None:
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ShapeError(f"q, k, v must be [..., L, d], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ShapeError(f"q and k must share the last dim d, got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ShapeError(f"k and v must have the same number of keys, got {k.shape[-2]} and {v.shape[-2]}")
    if causal and q.shape[-2] != k.shape[-2]:
        raise ShapeError(f"causal attention needs as many queries as keys, got {q.shape[-2]} and {k.shape[-2]}")
    if not isinstance(degree, int) or degree < 1:
        raise ConfigError(f"degree must be an integer >= 1, got {degree!r}")
    if exact_fallback not in (True, False, "auto"):
        raise ConfigError(f"exact_fallback must be True, False or 'auto', got {exact_fallback!r}")


def use_exact(q: Tensor, k: Tensor, degree: int, exact_fallback: bool | Literal["auto"] = "auto",
              scale: float | None = None, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Whether :func:`fast_attention` falls back to exact attention.

    ``False``: never. ``True``: when the relative error bound ``taylor_error_bound(entry_bound, g)``
    exceeds ``tolerance``. ``"auto"``: that, or when the polynomial cannot be cheaper than exact
    attention because its feature dimension F is at least the number of keys."""
    if exact_fallback is False:
        return False
    if taylor_error_bound(entry_bound(q, k, scale), degree) > tolerance:
        return True
    return exact_fallback == "auto" and feature_dim(q.shape[-1], degree) >= k.shape[-2]


def fast_attention(q: Tensor, k: Tensor, v: Tensor, degree: int = 4, causal: bool = False,
                   exact_fallback: bool | Literal["auto"] = "auto", scale: float | None = None,
                   tolerance: float = DEFAULT_TOLERANCE, block: int = 64) -> Tensor:
    """Polynomial-method attention ``D~^{-1} U (W^T V)`` with ``D~ = diag(U (W^T 1))`` (module
    docstring); q ``[..., Lq, d]``, k ``[..., L, d]``, v ``[..., L, dv]`` -> ``[..., Lq, dv]``.

    ``causal=True`` masks key j > query i with prefix sums over key blocks of size ``block``:
    within a block the (block x block) masked product ``tril(U_b W_b^T) V_b``, across blocks the
    running state ``sum_{j < block start} phi(k_j) [v_j, 1]^T``. ``exact_fallback``: see
    :func:`use_exact`. Odd degrees can make ``T_g(x)`` negative for ``x < -1``; keep degree even or
    entries small.
    """
    _check(q, k, v, degree, causal, exact_fallback)
    if use_exact(q, k, degree, exact_fallback, scale, tolerance):
        return exact_attention(q, k, v, causal=causal, scale=scale)
    root = (q.shape[-1] ** -0.5 if scale is None else scale) ** 0.5
    u, w = taylor_features(q * root, degree), taylor_features(k * root, degree)
    v1 = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)  # last column -> the normalizer
    if not causal:
        out = u @ (w.transpose(-2, -1) @ v1)
    else:
        state = v1.new_zeros(*v1.shape[:-2], u.shape[-1], v1.shape[-1])
        mask = torch.ones(block, block, dtype=torch.bool, device=q.device).tril()
        chunks = []
        for start in range(0, q.shape[-2], block):
            ub, wb, vb = (t[..., start:start + block, :] for t in (u, w, v1))
            n = ub.shape[-2]
            local = (ub @ wb.transpose(-2, -1)) * mask[:n, :n]
            chunks.append(ub @ state + local @ vb)
            state = state + wb.transpose(-2, -1) @ vb
        out = torch.cat(chunks, dim=-2)
    return out[..., :-1] / out[..., -1:]
