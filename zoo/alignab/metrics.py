"""Metrics for designed antibodies (AlignAb / DiffAb evaluation): CDR-H3 amino-acid recovery, C-alpha
RMSD after superposition on the framework, Pareto fronts and hypervolume of several energies.

- :func:`recovery` is the amino-acid recovery (AAR) of DiffAb (Luo et al. 2022, section 4.1): the
  fraction of designed positions whose amino acid equals the native one.
- :func:`kabsch` is the least-squares rotation of Kabsch (1976, Acta Cryst. A32:922), with the
  determinant sign fix that excludes reflections; :func:`framework_rmsd` superposes a design on the
  native using the framework (non-designed) C-alpha atoms only and measures the RMSD of the designed
  region, as DiffAb and AbDPO report for CDR-H3.
- :func:`pareto_ranks`, :func:`nondominated_fronts` and :func:`hypervolume` are non-dominated sorting
  (Deb et al. 2002, NSGA-II) and the exact hypervolume indicator (Zitzler & Thiele 1998) from the
  maintained ``moocore`` package (López-Ibáñez et al.), minimisation by default (energies: lower is better).
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np
import torch
from torch import Tensor

from zoo.core.errors import ShapeError


def recovery(designed: Tensor | str, native: Tensor | str, mask: Tensor | None = None) -> Tensor:
    """Amino-acid recovery: the fraction of positions (where ``mask`` is true) with ``designed == native``.

    ``designed`` and ``native`` are equal-length strings or integer tensors ``[..., N]`` (a batch of
    designs against one native broadcasts); returns a float tensor of the leading shape.
    """
    if isinstance(designed, str) or isinstance(native, str):
        if not (isinstance(designed, str) and isinstance(native, str)):
            raise ShapeError("recovery: pass both sequences as strings or both as tensors")
        if len(designed) != len(native):
            raise ShapeError(f"recovery: designed length {len(designed)} != native length {len(native)}")
        designed = torch.tensor([ord(c) for c in designed])
        native = torch.tensor([ord(c) for c in native])
    if designed.shape[-1] != native.shape[-1]:
        raise ShapeError(f"recovery: designed has {designed.shape[-1]} positions, native {native.shape[-1]}")
    same = (designed == native).double()
    if mask is None:
        mask = torch.ones(same.shape[-1], dtype=torch.bool)
    mask = mask.to(torch.bool)
    count = mask.sum(-1)
    if (count == 0).any():
        raise ShapeError("recovery: the mask selects no position")
    return (same * mask).sum(-1) / count


def kabsch(mobile: Tensor, target: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Rotation ``R`` and translation ``t`` minimising ``sum_i w_i |R x_i + t - y_i|^2`` (Kabsch 1976).

    ``mobile`` and ``target`` are ``[..., N, 3]``; ``weights`` ``[..., N]`` (a 0/1 mask selects the atoms to
    fit on). Returns ``R [..., 3, 3]`` (a proper rotation, det +1) and ``t [..., 3]``; apply as
    ``mobile @ R.T + t``.
    """
    if mobile.shape != target.shape or mobile.shape[-1] != 3:
        raise ShapeError(f"kabsch: mobile {tuple(mobile.shape)} and target {tuple(target.shape)} "
                         "must be equal [..., N, 3]")
    if weights is None:
        weights = torch.ones(mobile.shape[:-1], dtype=mobile.dtype, device=mobile.device)
    w = weights.to(mobile.dtype)[..., None]
    total = w.sum(-2, keepdim=True)
    if (total <= 0).any():
        raise ShapeError("kabsch: no atom to fit on (all weights are zero)")
    mu_x, mu_y = (w * mobile).sum(-2, keepdim=True) / total, (w * target).sum(-2, keepdim=True) / total
    covariance = ((mobile - mu_x) * w).transpose(-1, -2) @ (target - mu_y)  # [..., 3, 3] = X^T W Y
    u, _, vh = torch.linalg.svd(covariance)
    sign = torch.sign(torch.linalg.det(vh.transpose(-1, -2) @ u.transpose(-1, -2)))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    fix = torch.diag_embed(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], -1))
    rotation = vh.transpose(-1, -2) @ fix @ u.transpose(-1, -2)
    translation = mu_y.squeeze(-2) - (mu_x @ rotation.transpose(-1, -2)).squeeze(-2)
    return rotation, translation


def framework_rmsd(designed_ca: Tensor, native_ca: Tensor, fit_mask: Tensor, eval_mask: Tensor) -> Tensor:
    """C-alpha RMSD over ``eval_mask`` (e.g. CDR-H3) after superposing the design on the native using
    the atoms in ``fit_mask`` (the framework: antibody residues outside the designed CDR).

    ``designed_ca`` ``[..., N, 3]`` (a batch of designs), ``native_ca`` ``[N, 3]`` or the same shape as
    the designs; masks ``[N]`` or ``[..., N]``. Computed in float64; returns ``[...]``.
    """
    designed = designed_ca.double()
    native = native_ca.double().expand_as(designed)
    fit = fit_mask.to(torch.float64).expand(designed.shape[:-1])
    rotation, translation = kabsch(designed, native, fit)
    moved = designed @ rotation.transpose(-1, -2) + translation[..., None, :]
    keep = eval_mask.to(torch.float64).expand(designed.shape[:-1])
    if (keep.sum(-1) == 0).any():
        raise ShapeError("framework_rmsd: eval_mask selects no residue")
    return (((moved - native) ** 2).sum(-1) * keep).sum(-1).div(keep.sum(-1)).sqrt()


def _points(points: Tensor | np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    array = points.detach().cpu().double().numpy() if isinstance(points, Tensor) else np.asarray(points, dtype=float)
    if array.ndim != 2 or array.shape[1] < 1:
        raise ShapeError(f"expected points [n, objectives], got shape {array.shape}")
    return array


def pareto_ranks(points: Tensor | np.ndarray, maximise: bool | Sequence[bool] = False) -> np.ndarray:
    """Non-dominated sorting rank of every point (0 = not dominated by any point); minimisation by default."""
    array = _points(points)
    if len(array) == 0:
        return np.zeros(0, dtype=int)
    return np.asarray(moocore.pareto_rank(array, maximise=maximise), dtype=int)


def nondominated_fronts(points: Tensor | np.ndarray, maximise: bool | Sequence[bool] = False) -> list[np.ndarray]:
    """All Pareto fronts, best first: ``fronts[k]`` holds the indices of the points of rank ``k``."""
    ranks = pareto_ranks(points, maximise)
    return [np.flatnonzero(ranks == k) for k in range(int(ranks.max()) + 1)] if len(ranks) else []


def hypervolume(points: Tensor | np.ndarray, reference: Sequence[float] | Tensor | np.ndarray,
                maximise: bool | Sequence[bool] = False) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``reference`` (minimisation by default:
    the volume of the union of the boxes ``[p, reference]``). Points that do not strictly dominate the
    reference contribute nothing."""
    array = _points(points)
    ref = np.asarray(reference.detach().cpu().double() if isinstance(reference, Tensor) else reference, dtype=float)
    if ref.shape != (array.shape[1],):
        raise ShapeError(f"hypervolume: reference has shape {ref.shape}, expected ({array.shape[1]},)")
    if len(array) == 0:
        return 0.0
    return float(moocore.hypervolume(array, ref=ref, maximise=maximise))
