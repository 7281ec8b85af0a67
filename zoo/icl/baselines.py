"""Baselines for in-context regression, computed on the same prompts as the transformer (Garg et al.
2022, Sec. 4; Wu et al. 2025's "direct training").

Each maps ``xs [B, n, d], ys [B, n]`` to predictions ``[B, n]``: the prediction at position ``i``
uses only the examples ``j < i`` and ``x_i`` (0 where there is no example). All are batched over
prompts; ``least_squares`` loops over positions, ``direct_training`` trains one network per prompt
with batched weights ``[B, out, in]`` (the prompts' losses are summed, so each network gets exactly
its own gradient and its own Adam state).
"""

from __future__ import annotations

import torch
from torch import Tensor

from data_modules.icl_tasks import init_relu_net, relu_net


def zero(xs: Tensor, ys: Tensor) -> Tensor:
    return torch.zeros_like(ys)


def earlier_mask(n: int, device: torch.device | None = None) -> Tensor:
    """``[n, n]`` bool, ``True`` where key ``j < i`` (query ``i``)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril(-1)


def averaging(xs: Tensor, ys: Tensor) -> Tensor:
    """``w_i = (1/i) sum_{j<i} y_j x_j``, prediction ``w_i^T x_i`` (Garg et al.'s averaging)."""
    n = xs.shape[1]
    mask = earlier_mask(n, xs.device).to(xs.dtype)
    w = mask @ (ys[..., None] * xs) / mask.sum(-1).clamp_min(1)[:, None]
    return (w * xs).sum(-1)


def knn(xs: Tensor, ys: Tensor, k: int = 3) -> Tensor:
    """Mean ``y`` of the ``k`` examples ``j < i`` nearest to ``x_i`` (all of them while ``i < k``)."""
    n = xs.shape[1]
    distance = torch.cdist(xs, xs).masked_fill(~earlier_mask(n, xs.device), float("inf"))
    k = min(k, n)
    near, index = distance.topk(k, dim=-1, largest=False)
    valid = near.isfinite().to(ys.dtype)
    picked = ys[:, None, :].expand(-1, n, -1).gather(2, index)
    return (picked * valid).sum(-1) / valid.sum(-1).clamp_min(1)


def least_squares(xs: Tensor, ys: Tensor, ridge: float = 0.0) -> Tensor:
    """Minimum-norm least squares (``ridge = 0``) or ridge regression ``argmin ||X w - y||^2 +
    ridge ||w||^2`` on the examples ``j < i``, prediction ``w^T x_i``."""
    b, n, d = xs.shape
    out = torch.zeros_like(ys)
    for i in range(1, n):
        x, y = xs[:, :i], ys[:, :i, None]
        if ridge > 0:
            gram = x.transpose(1, 2) @ x + ridge * torch.eye(d, dtype=xs.dtype, device=xs.device)
            w = torch.linalg.solve(gram, x.transpose(1, 2) @ y)
        else:
            w = torch.linalg.pinv(x) @ y
        out[:, i] = (xs[:, i : i + 1] @ w)[:, 0, 0]
    return out


def gd_prediction(xs: Tensor, ys: Tensor, eta: float) -> Tensor:
    """One gradient step from ``w = 0`` on ``(1/2i) sum_{j<i} (w^T x_j - y_j)^2``, prediction
    ``w_1^T x_i`` with ``w_1 = (eta / i) sum_{j<i} y_j x_j`` (what von Oswald et al.'s layer computes)."""
    return eta * averaging(xs, ys)


def direct_training(xs: Tensor, ys: Tensor, positions: list[int], depth: int = 3, hidden: int = 32, steps: int = 200,
                    lr: float = 5e-3, optimizer: str = "adam", seed: int = 0, return_losses: bool = False):
    """Wu et al.'s comparison: for each ``i`` in ``positions``, train a fresh ``depth``-layer ReLU
    network (``hidden`` wide, the task's shape) on the examples ``j < i`` of every prompt, by
    ``steps`` full-batch steps of Adam (or plain GD) at ``lr`` on the mean squared error, and predict
    ``y_i``. Returns ``[B, len(positions)]`` (and, with ``return_losses``, the training losses
    ``[len(positions), steps + 1, B]`` before each step and after the last)."""
    b, _, d = xs.shape
    preds, losses = [], []
    for i in positions:
        generator = torch.Generator().manual_seed(seed * 100003 + i)
        weights = [w.requires_grad_() for w in init_relu_net(b, d, hidden, depth, generator, xs.dtype)]
        if i == 0:
            preds.append(torch.zeros(b, dtype=xs.dtype))
            losses.append(torch.zeros(steps + 1, b, dtype=xs.dtype))
            continue
        opt = torch.optim.Adam(weights, lr=lr) if optimizer == "adam" else torch.optim.SGD(weights, lr=lr)
        history = []
        with torch.enable_grad():
            for _ in range(steps):
                loss = ((relu_net(xs[:, :i], weights) - ys[:, :i]) ** 2).mean(1)
                history.append(loss.detach())
                opt.zero_grad()
                loss.sum().backward()
                opt.step()
        with torch.no_grad():
            history.append(((relu_net(xs[:, :i], weights) - ys[:, :i]) ** 2).mean(1))
            preds.append(relu_net(xs[:, i : i + 1], weights)[:, 0])
        losses.append(torch.stack(history))
    out = torch.stack(preds, 1)
    return (out, torch.stack(losses)) if return_losses else out


BASELINES = {"zero": zero, "averaging": averaging, "knn": knn, "least_squares": least_squares}
