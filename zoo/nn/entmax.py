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

Sparsemax and 1.5-entmax find ``tau`` from the scores sorted in decreasing order: the support size
is the number of sorted prefixes whose condition holds (once false it stays false), and ``tau``
comes from the prefix sums of the support. Their supports are usually small (a few to a few dozen
entries), so sorting whole rows (``method="sort"``, the reference) is wasted work. ``method``:

- ``"topk"``: sort only the ``k`` largest entries of each row (``torch.topk``, ``k`` from ``FIRST_K``).
  A row whose count stays below ``k`` has its whole support in its top ``k`` and the same ``tau``
  as the full sort (same prefix sums, same formula); only the rows whose count reaches ``k`` are
  taken again, with ``k`` doubled, and sorted whole once the doubled ``k`` would reach half the row.
- ``"blocks"``: one reduction gives the maxima of blocks of ``BLOCK`` entries; the threshold of
  the largest maxima (a subset of the row) bounds ``tau`` from below, so only the blocks whose
  maximum lies above the bound can hold the support; those are gathered, the top of them sorted,
  and the weights (and, in the backward, the gradients) computed on them and scattered into zeros
  (``_block_threshold``).
- ``"auto"`` (the default): ``"blocks"`` for rows of at least ``AUTO_BLOCKS_FROM`` entries, else
  ``"topk"`` (the faster of the two on the CPU, ``benchmarks/hopfield/sparse_maps.py``).

All give the outputs and gradients of the full sort (tested to 1e-12 in float64).
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.core.errors import ConfigError, ShapeError


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


# The first k of the "topk" method, halved (once) for short rows: CPU ``topk`` is much cheaper while
# 64 k <= n (a partial sort); 1.5-entmax supports are several times sparsemax's (on standard normal
# scores of 1k-60k entries, means 18-33 vs 4-5).
FIRST_K = {"sparsemax": 16, "entmax15": 64}
BLOCK = {"sparsemax": 16, "entmax15": 16}  # the "blocks" method's block length ...
BLOCK_K = {"sparsemax": 16, "entmax15": 64}  # ... and how many block maxima give its lower bound on tau
AUTO_BLOCKS_FROM = 4096  # "auto": "blocks" for rows at least this long, else "topk"
METHODS = ("auto", "blocks", "topk", "sort")


def _sparsemax_threshold(z_sorted: Tensor) -> tuple[Tensor, Tensor]:
    """Sparsemax ``tau`` and support size of rows ``[..., k]`` of shifted scores sorted in decreasing
    order (a row's top ``k`` or all of it); the support count is exact when it is below ``k``."""
    cumulative = z_sorted.cumsum(-1)
    ranks = torch.arange(1, z_sorted.shape[-1] + 1, device=z_sorted.device, dtype=z_sorted.dtype)
    support = (1 + ranks * z_sorted > cumulative).sum(dim=-1, keepdim=True)
    tau = (cumulative.gather(-1, support - 1) - 1) / support.to(z_sorted.dtype)
    return tau, support


def _entmax15_threshold(z_sorted: Tensor) -> tuple[Tensor, Tensor]:
    """1.5-entmax ``tau`` and support size of rows ``[..., k]`` of halved shifted scores sorted in
    decreasing order, as in ``_sparsemax_threshold``."""
    ranks = torch.arange(1, z_sorted.shape[-1] + 1, device=z_sorted.device, dtype=z_sorted.dtype)
    mean = z_sorted.cumsum(-1) / ranks
    mean_sq = (z_sorted**2).cumsum(-1) / ranks
    delta = (1 - ranks * (mean_sq - mean**2)) / ranks
    tau = mean - torch.sqrt(torch.clamp(delta, min=0))
    support = (tau <= z_sorted).sum(dim=-1, keepdim=True)
    return tau.gather(-1, support - 1), support


def _threshold(z: Tensor, dim: int, name: str, method: str) -> tuple[Tensor, Tensor]:
    """Row maxima ``top`` (checked finite) and ``tau`` of ``z`` along ``dim``, both keepdim, for
    ``name`` in ``sparsemax`` (``p = [(z - top) - tau]_+``) or ``entmax15``
    (``p = [(z - top) / 2 - tau]_+^2``). ``sort`` sorts whole rows; ``topk`` sorts the top ``k`` of every
    row and retries, with ``k`` doubled, only the rows whose support count reached ``k``."""
    threshold = _sparsemax_threshold if name == "sparsemax" else _entmax15_threshold
    scale = (lambda v, top: v - top) if name == "sparsemax" else (lambda v, top: (v - top) / 2)
    n = z.shape[dim]
    rows = z.movedim(dim, -1)  # a view, [..., n]
    first_k = FIRST_K[name] if 64 * FIRST_K[name] <= n else max(1, FIRST_K[name] // 2)
    k = n if method == "sort" or 2 * first_k >= n else first_k
    values = rows.topk(k, dim=-1).values if k < n else rows.sort(dim=-1, descending=True).values
    top = values[..., :1]  # the row maxima (NaN first, as in amax)
    _check_finite(top, name)
    tau, support = threshold(scale(values, top))
    if k < n:
        unsure = (support == k).view(-1)  # count reached k: the support may hold entries beyond the top k
        if bool(unsure.any()):
            tau, top = tau.reshape(-1, 1).clone(), top.reshape(-1, 1)
            index = unsure.nonzero().view(-1)
            flat = rows.reshape(-1, n)
            while index.numel():
                k = 2 * k if 4 * k < n else n
                again = flat.index_select(0, index)
                values = again.topk(k, dim=-1).values if k < n else again.sort(dim=-1, descending=True).values
                tau_again, support = threshold(scale(values, top.index_select(0, index)))
                tau.index_copy_(0, index, tau_again)
                index = index[support.view(-1) == k] if k < n else index[:0]
            tau, top = tau.view(rows.shape[:-1] + (1,)), top.view(rows.shape[:-1] + (1,))
    return top.movedim(-1, dim), tau.movedim(-1, dim)


def _block_threshold(z: Tensor, dim: int, name: str):
    """``_threshold`` by blocks. The row splits into blocks of ``BLOCK`` entries (block ``j`` holds the
    entries ``j, j + s, ..., j + (BLOCK - 1) s`` with ``s = n // BLOCK``, so that their maxima are an
    elementwise max of ``BLOCK`` contiguous slices, one read of the row) and a tail of the last
    ``n % BLOCK`` entries. The threshold of any subset of a row is at most the row's (the subset's
    ``sum [x - tau]_+^(1/(alpha-1))`` reaches 1 no later), so that of the ``BLOCK_K`` largest block maxima
    bounds ``tau`` from below; every support entry lies above that bound, so in a block whose maximum
    does, or in the tail. Only those blocks and the tail are gathered, and of them only the top
    entries, as many as lie above the bound (a superset of the support), are sorted: the same ``tau``.
    Returns ``top`` and ``tau`` (keepdim, along ``dim``) and the candidates' positions and scores
    along the last dim of ``z.movedim(dim, -1)`` (every support entry is among them)."""
    threshold = _sparsemax_threshold if name == "sparsemax" else _entmax15_threshold
    scale = (lambda v, top: v - top) if name == "sparsemax" else (lambda v, top: (v - top) / 2)
    rows = z.movedim(dim, -1)  # a view, [..., n]
    n = rows.shape[-1]
    block = BLOCK[name]
    stride = n // block
    maxima = rows[..., : block * stride].unflatten(-1, (block, stride)).amax(-2)  # [..., stride]
    tail = rows[..., block * stride :]
    top = maxima.amax(-1, keepdim=True)
    if tail.shape[-1]:
        top = torch.maximum(top, tail.amax(-1, keepdim=True))
    _check_finite(top, name)
    k = min(BLOCK_K[name], stride)
    values, chosen = maxima.topk(k, dim=-1) if k < stride else maxima.sort(dim=-1, descending=True)
    bound, _ = threshold(scale(values, top))  # <= tau
    bound = bound - 64 * torch.finfo(z.dtype).eps * (1 + bound.abs())  # a margin for rounding
    count = int((scale(maxima, top) > bound).sum(-1).max())  # blocks that may hold support entries
    chosen = (chosen[..., :count] if count <= k else maxima.topk(count, dim=-1).indices).unsqueeze(-1)
    lane = torch.arange(block, device=z.device) * stride
    position = (chosen + lane).flatten(-2)
    if tail.shape[-1]:
        position = torch.cat([position, torch.arange(block * stride, n, device=z.device).expand(
            position.shape[:-1] + (n - block * stride,))], -1)
    candidates = rows.gather(-1, position)
    count = max(1, int((scale(candidates, top) > bound).sum(-1).max()))  # entries that may be in the support
    width = candidates.shape[-1]
    values = candidates.topk(count, dim=-1).values if 2 * count < width else candidates.sort(-1, True).values
    tau, _ = threshold(scale(values, top))
    return top.movedim(-1, dim), tau.movedim(-1, dim), (position, candidates, top, tau)


def _into_zeros(like: Tensor, dim: int, position: Tensor, values: Tensor) -> Tensor:
    """Zeros shaped like ``like`` holding ``values`` at ``position`` (along the last dim of
    ``like.movedim(dim, -1)``; no position twice in a row)."""
    out = torch.zeros_like(like)
    if dim == like.dim() - 1 and out.is_contiguous():  # flat indexing beats scatter_ on the CPU ...
        row_start = torch.arange(0, out.numel(), like.shape[-1], device=like.device).view(position.shape[:-1] + (1,))
        values = values.reshape(-1)
        keep = values != 0  # ... and writing only the nonzeros (most candidates are off the support)
        out.view(-1)[(position + row_start).view(-1)[keep]] = values[keep]
    else:
        out.movedim(dim, -1).scatter_(-1, position, values)
    return out


def _sparse_map(z: Tensor, dim: int, name: str, method: str, weights) -> tuple[Tensor, Tensor | None]:
    """``weights(z - top, tau)`` (in place on its first argument) along ``dim``, and ``None``; with
    ``blocks`` computed on the candidates only, scattered into zeros (every other entry is 0), and the
    candidates' positions (along the last dim of ``z.movedim(dim, -1)``) instead of ``None``."""
    if method == "auto":
        method = "blocks" if z.shape[dim] >= AUTO_BLOCKS_FROM else "topk"
    if method != "blocks" or z.shape[dim] < 4 * BLOCK[name] or z.numel() == 0:
        top, tau = _threshold(z, dim, name, "sort" if method == "blocks" else method)
        return weights(z - top, tau), None
    _, _, (position, candidates, top, tau) = _block_threshold(z, dim, name)
    return _into_zeros(z, dim, position, weights(candidates - top, tau)), position


def _sparse_backward(ctx, grad: Tensor, weight) -> Tensor:
    """``_backward`` with ``weight(p)``; on the candidates only where the forward found them (the
    support is among them, and the gradient is 0 off the support)."""
    p, position = ctx.saved_tensors
    if position.numel() == 0:
        return _backward(grad, weight(p), ctx.dim)
    dim = ctx.dim
    p_rows = p.movedim(dim, -1).gather(-1, position)
    grad_rows = grad.movedim(dim, -1).gather(-1, position)
    return _into_zeros(p, dim, position, _backward(grad_rows, weight(p_rows), -1))


class SparsemaxFunction(torch.autograd.Function):
    """Euclidean projection onto the simplex: ``p = [z - tau]_+`` (alpha = 2)."""

    @staticmethod
    def forward(ctx, z: Tensor, dim: int, method: str = "auto") -> Tensor:
        p, position = _sparse_map(z, dim, "sparsemax", method, lambda shifted, tau: shifted.sub_(tau).clamp_(min=0))
        ctx.save_for_backward(p, position if position is not None else p.new_empty(0, dtype=torch.long))
        ctx.dim = dim
        return p

    @staticmethod
    def backward(ctx, grad: Tensor):
        # alpha = 2: w is the support
        return _sparse_backward(ctx, grad, lambda p: (p > 0).to(grad.dtype)), None, None


class Entmax15Function(torch.autograd.Function):
    """1.5-entmax, exact by sorting: ``p = [z/2 - tau]_+^2``."""

    @staticmethod
    def forward(ctx, z: Tensor, dim: int, method: str = "auto") -> Tensor:
        # ((z - top) / 2 - tau)^2 exactly (scaling by 2 and 1/4 is exact)
        p, position = _sparse_map(z, dim, "entmax15", method,
                                  lambda shifted, tau: shifted.sub_(2 * tau).clamp_(min=0).square_().mul_(0.25))
        ctx.save_for_backward(p, position if position is not None else p.new_empty(0, dtype=torch.long))
        ctx.dim = dim
        return p

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _sparse_backward(ctx, grad, torch.sqrt), None, None  # alpha = 1.5: w = sqrt(p)


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


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    return method


def sparsemax(z: Tensor, dim: int = -1, method: str = "auto") -> Tensor:
    """Sparsemax (2-entmax) of ``z`` along ``dim``. ``method``: ``topk`` (sorts the top entries of each
    row, as many as the support needs) or ``sort`` (sorts whole rows); the same result."""
    return SparsemaxFunction.apply(z, dim % z.dim(), _check_method(method))


def entmax15(z: Tensor, dim: int = -1, method: str = "auto") -> Tensor:
    """1.5-entmax of ``z`` along ``dim`` (exact); ``method`` as in ``sparsemax``."""
    return Entmax15Function.apply(z, dim % z.dim(), _check_method(method))


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
