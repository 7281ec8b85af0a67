"""Sparse probability maps: sparsemax, 1.5-entmax and alpha-entmax, with exact gradients.

alpha-entmax (Peters, Niculae & Martins, 2019) maps scores ``z`` to the simplex:

    entmax_alpha(z) = argmax_{p in simplex} <p, z> + H_alpha(p),
    H_alpha(p) = (1 - sum_i p_i^alpha) / (alpha (alpha - 1))      (Tsallis entropy; Shannon at alpha = 1)

with the closed form ``p_i = [(alpha - 1) z_i - tau]_+ ^ (1 / (alpha - 1))``, ``tau`` chosen so
that ``sum p = 1``. ``alpha = 1`` is softmax, ``alpha = 2`` is sparsemax (Martins & Astudillo,
2016), ``alpha = 1.5`` has an exact sort-based solution. Sparse Modern Hopfield models use these
as the separation function of retrieval (Hu et al., 2023).

All three are ``torch.autograd.Function``s with the closed-form Jacobian-vector products; the
bisection version also differentiates with respect to ``alpha`` (learnable alpha).
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.core.errors import ConfigError, ShapeError


def _sorted_cumulative(z: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Scores sorted in decreasing order, their cumulative sums, and ranks 1..n shaped to broadcast."""
    z_sorted, _ = torch.sort(z, dim=dim, descending=True)
    ranks = torch.arange(1, z.shape[dim] + 1, device=z.device, dtype=z.dtype)
    shape = [1] * z.dim()
    shape[dim] = -1
    return z_sorted, z_sorted.cumsum(dim), ranks.view(shape)


def _check_finite(top: Tensor, name: str) -> None:
    """``top`` is the row maxima of the scores: NaN if a row holds a NaN, +inf if it holds +inf, -inf if
    every entry is -inf (masked out). Each leaves no probability vector; one check, one sync per call."""
    if not bool(torch.isfinite(top).all()):
        bad = ~torch.isfinite(top)
        kinds = sorted({"NaN" if torch.isnan(v) else ("+inf" if v > 0 else "all -inf") for v in top[bad][:64]})
        raise ShapeError(
            f"{name}: scores must be finite numbers (-inf only to mask some, not all, entries of a row); "
            f"{int(bad.sum())} of {top.numel()} rows hold {' / '.join(kinds)}"
        )


def _backward(grad: Tensor, weight: Tensor, dim: int) -> Tensor:
    """Jacobian-vector product of every alpha-entmax: with ``w_i = p_i^(2 - alpha)`` on the support
    (0 elsewhere), ``dz = w * g - w * sum(w * g) / sum(w)``."""
    weighted = grad * weight
    return weighted - weight * weighted.sum(dim=dim, keepdim=True) / weight.sum(dim=dim, keepdim=True)


class SparsemaxFunction(torch.autograd.Function):
    """Euclidean projection onto the simplex: ``p = [z - tau]_+`` (alpha = 2)."""

    @staticmethod
    def forward(ctx, z: Tensor, dim: int) -> Tensor:
        top = z.amax(dim=dim, keepdim=True)
        _check_finite(top, "sparsemax")
        z = z - top  # shift-invariant; keeps the cumulative sums small
        z_sorted, cumulative, ranks = _sorted_cumulative(z, dim)
        support = (1 + ranks * z_sorted > cumulative).sum(dim=dim, keepdim=True)
        tau = (cumulative.gather(dim, support - 1) - 1) / support.to(z.dtype)
        p = torch.clamp(z - tau, min=0)
        ctx.save_for_backward(p)
        ctx.dim = dim
        return p

    @staticmethod
    def backward(ctx, grad: Tensor):
        (p,) = ctx.saved_tensors
        return _backward(grad, (p > 0).to(grad.dtype), ctx.dim), None  # alpha = 2: w is the support


class Entmax15Function(torch.autograd.Function):
    """1.5-entmax, exact by sorting: ``p = [z/2 - tau]_+^2``."""

    @staticmethod
    def forward(ctx, z: Tensor, dim: int) -> Tensor:
        top = z.amax(dim=dim, keepdim=True)
        _check_finite(top, "entmax15")
        z = (z - top) / 2
        z_sorted, cumulative, ranks = _sorted_cumulative(z, dim)
        mean = cumulative / ranks
        mean_sq = (z_sorted**2).cumsum(dim) / ranks
        delta = (1 - ranks * (mean_sq - mean**2)) / ranks
        tau = mean - torch.sqrt(torch.clamp(delta, min=0))
        support = (tau <= z_sorted).sum(dim=dim, keepdim=True)
        tau_star = tau.gather(dim, support - 1)
        p = torch.clamp(z - tau_star, min=0) ** 2
        ctx.save_for_backward(p)
        ctx.dim = dim
        return p

    @staticmethod
    def backward(ctx, grad: Tensor):
        (p,) = ctx.saved_tensors
        return _backward(grad, p.sqrt(), ctx.dim), None  # alpha = 1.5: w = sqrt(p)


class EntmaxBisectFunction(torch.autograd.Function):
    """alpha-entmax for any ``alpha`` in (1, 2] by bisection on ``tau``; differentiable in ``alpha``."""

    @staticmethod
    def forward(ctx, z: Tensor, alpha: Tensor, dim: int, n_iter: int) -> Tensor:
        ctx.alpha_shape = alpha.shape
        alpha = alpha.to(z)
        while alpha.dim() < z.dim():  # a scalar or per-row alpha broadcasts along dim
            alpha = alpha.unsqueeze(-1)
        exponent = 1 / (alpha - 1)
        x = (alpha - 1) * z
        top = x.amax(dim=dim, keepdim=True)
        _check_finite(top, "entmax_bisect")
        n = z.shape[dim]
        lo, hi = top - 1, top - (1 / n) ** (alpha - 1)  # sum p >= 1 at lo, <= 1 at hi
        for _ in range(n_iter):
            mid = (lo + hi) / 2
            mass = torch.clamp(x - mid, min=0).pow(exponent).sum(dim=dim, keepdim=True)
            lo = torch.where(mass >= 1, mid, lo)
            hi = torch.where(mass >= 1, hi, mid)
        p = torch.clamp(x - (lo + hi) / 2, min=0).pow(exponent)
        p = p / p.sum(dim=dim, keepdim=True)
        ctx.save_for_backward(p, alpha)
        ctx.dim = dim
        return p

    @staticmethod
    def backward(ctx, grad: Tensor):
        p, alpha = ctx.saved_tensors
        dim = ctx.dim
        weight = torch.where(p > 0, p ** (2 - alpha), torch.zeros_like(p))
        grad_z = _backward(grad, weight, dim)
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            # d p / d alpha from differentiating p = [(alpha-1) z - tau]_+^(1/(alpha-1)), sum p = 1
            p_log_p = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))
            entropy_term = p_log_p.sum(dim=dim, keepdim=True)
            skewed = weight / weight.sum(dim=dim, keepdim=True)
            d_p = (p - skewed) / (alpha - 1) ** 2 - (p_log_p - skewed * entropy_term) / (alpha - 1)
            grad_alpha = (grad * d_p).sum(dim=dim)
            grad_alpha = grad_alpha.sum() if len(ctx.alpha_shape) == 0 else grad_alpha.sum_to_size(ctx.alpha_shape)
        return grad_z, grad_alpha, None, None


def sparsemax(z: Tensor, dim: int = -1) -> Tensor:
    """Sparsemax (2-entmax) of ``z`` along ``dim``."""
    return SparsemaxFunction.apply(z, dim % z.dim())


def entmax15(z: Tensor, dim: int = -1) -> Tensor:
    """1.5-entmax of ``z`` along ``dim`` (exact)."""
    return Entmax15Function.apply(z, dim % z.dim())


def entmax_bisect(z: Tensor, alpha: float | Tensor = 1.5, dim: int = -1, n_iter: int = 50) -> Tensor:
    """alpha-entmax for ``alpha`` in [1, 2] (a float, or a tensor broadcastable to ``z`` without
    ``dim``, possibly requiring grad). ``alpha = 1`` falls back to softmax. ``n_iter`` bisection
    steps fix ``tau`` to about ``2^-n_iter`` of the score range; the result is renormalized."""
    alpha_t = torch.as_tensor(alpha, dtype=z.dtype, device=z.device)
    if not bool(((alpha_t >= 1) & (alpha_t <= 2)).all()):  # also false for NaN
        raise ConfigError(f"entmax alpha must lie in [1, 2], got {alpha}")
    if not alpha_t.requires_grad and torch.all(alpha_t == 1):
        return torch.softmax(z, dim=dim)
    alpha_t = alpha_t.clamp(min=1 + 1e-3)  # the closed form needs alpha > 1; 1 + 1e-3 is softmax to ~1e-3
    dim = dim % z.dim()
    if dim != z.dim() - 1:
        return EntmaxBisectFunction.apply(z.movedim(dim, -1), alpha_t, z.dim() - 1, n_iter).movedim(-1, dim)
    return EntmaxBisectFunction.apply(z, alpha_t, dim, n_iter)
