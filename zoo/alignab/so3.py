"""Rotations, residue frames and the isotropic Gaussian on SO(3) (IGSO3) for AlignAb's orientation diffusion.

Rotations are 3x3 matrices acting on column vectors; a rotation vector ``v = omega * axis`` (angle ``omega`` in
``[0, pi]``) maps to a matrix by Rodrigues' formula (:func:`so3_exp`) and back by :func:`so3_log`.

IGSO3 (Nikolayev & Savyolov 1970; Leach et al. 2022, "Denoising diffusion probabilistic models on SO(3)"):
the heat kernel on SO(3) after time ``eps^2 / 2``, i.e. Brownian motion whose rotation vector is ~N(0, eps^2 I)
while ``eps`` is small. Its density with respect to the normalised Haar measure depends on the angle only,

    f(omega; eps) = sum_{l >= 0} (2l + 1) exp(-l (l + 1) eps^2 / 2) sin((l + 1/2) omega) / sin(omega / 2),   (1)

and the Haar measure gives the angle the density ``(1 - cos omega) / pi`` on ``[0, pi]``, so the angle of an
IGSO3 draw has the density

    p(omega; eps) = f(omega; eps) (1 - cos omega) / pi.                                                        (2)

(DiffAb's ``ApproxAngularDistribution`` writes ``exp(-l (l + 1) e^2)``: its ``e`` is this ``eps / sqrt 2``.)
A draw (:class:`IGSO3`): the angle by inverting the tabulated CDF of (2), the axis uniform on the sphere.

Residue frames follow ``data_modules.complexes.local_frames``: columns e1 (CA->C), e2 (toward N, orthogonal to
e1), e3 = e1 x e2. :func:`backbone_from_frames` places N, CA, C at ideal local coordinates (Engh & Huber 1991
bond lengths N-CA 1.458 A, CA-C 1.525 A, angle N-CA-C 111.0 deg) and O in the peptide plane, bisecting the
angle CA-C-N(i+1) on the outside at 1.231 A.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from zoo.core.errors import ConfigError


def hat(v: Tensor) -> Tensor:
    """The skew-symmetric matrix ``[v]_x`` of ``v [..., 3]``, so that ``[v]_x u = v x u``."""
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*v.shape[:-1], 3, 3)


def so3_exp(v: Tensor) -> Tensor:
    """Rodrigues: ``exp([v]_x) = I + sin(w)/w [v]_x + (1 - cos w)/w^2 [v]_x^2``, ``w = |v|`` (Taylor below 1e-4)."""
    w = v.norm(dim=-1, keepdim=True)[..., None]
    small = w < 1e-4
    safe = torch.where(small, torch.ones_like(w), w)
    a = torch.where(small, 1 - w**2 / 6, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - w**2 / 24, (1 - torch.cos(safe)) / safe**2)
    k = hat(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_quaternion(r: Tensor) -> Tensor:
    """Unit quaternion ``(w, x, y, z)``, ``w >= 0``, of rotation matrices ``[..., 3, 3]`` (Shepperd's method:
    the largest of the four candidate denominators, so no branch divides by a small number)."""
    m = r.reshape(-1, 3, 3)
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    candidates = torch.stack([trace, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], -1)
    choice = candidates.argmax(-1)
    q = torch.empty(len(m), 4, dtype=m.dtype, device=m.device)
    rows = [
        (1 + trace, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]),
        (m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0],
         m[:, 0, 2] + m[:, 2, 0]),
        (m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2],
         m[:, 1, 2] + m[:, 2, 1]),
        (m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1],
         1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]),
    ]
    for k, row in enumerate(rows):
        pick = choice == k
        if pick.any():
            part = torch.stack([c[pick] for c in row], -1)
            q[pick] = part / (2 * part[:, k : k + 1].clamp_min(1e-30).sqrt())
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0).to(q)
    return torch.nn.functional.normalize(q, dim=-1).reshape(*r.shape[:-2], 4)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` of quaternions ``(w, x, y, z)`` ``[..., 4]`` (normalised first)."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def so3_log(r: Tensor) -> Tensor:
    """Rotation vector ``[..., 3]`` (angle in ``[0, pi]``) of rotation matrices, through the quaternion."""
    q = matrix_to_quaternion(r)
    xyz = q[..., 1:]
    s = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, q[..., :1])
    scale = torch.where(s < 1e-8, 2 / q[..., :1].clamp_min(1e-8), angle / s.clamp_min(1e-30))
    return xyz * scale


def rotation_angle(r: Tensor) -> Tensor:
    """The angle ``[...]`` of rotations ``[..., 3, 3]``: ``acos((tr R - 1) / 2)``, clamped."""
    return torch.acos(((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))


def random_rotations(shape: Sequence[int], generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform (Haar) random rotations ``[*shape, 3, 3]``: normalised Gaussian quaternions (Shoemake 1992)."""
    q = torch.randn(*shape, 4, generator=generator, dtype=dtype)
    return quaternion_to_matrix(q)


def rotation_loss(r_pred: Tensor, r_true: Tensor) -> Tensor:
    """DiffAb's rotation loss, the cosine distance summed over the three frame axes:
    ``sum_k (1 - <R_pred e_k, R_true e_k>) = 3 - tr(R_pred^T R_true) = 2 (1 - cos theta)``, with ``theta`` the
    angle of ``R_pred^T R_true``: 0 at ``R_pred = R_true`` and increasing in ``theta``."""
    return 3 - (r_pred * r_true).sum((-1, -2))


def igso3_density(omega: Tensor, eps: float, terms: int | None = None) -> Tensor:
    """Eq. (1): the IGSO3 density with respect to the normalised Haar measure, float64, at angles ``omega``.
    The series is cut where ``exp(-l^2 eps^2 / 2)`` < 1e-8 (``terms`` overrides)."""
    terms = terms or int(math.ceil(6.1 / eps)) + 10
    omega = omega.to(torch.float64)[..., None]
    l = torch.arange(terms, dtype=torch.float64)  # noqa: E741
    half = (omega / 2).clamp_min(1e-12)
    series = (2 * l + 1) * torch.exp(-l * (l + 1) * eps**2 / 2) * torch.sin((l + 0.5) * omega) / torch.sin(half)
    # at omega -> 0, sin((l + 1/2) w) / sin(w / 2) -> 2l + 1
    limit = (2 * l + 1) ** 2 * torch.exp(-l * (l + 1) * eps**2 / 2)
    return torch.where(omega.squeeze(-1) < 1e-9, limit.sum(-1), series.sum(-1))


def igso3_angle_density(omega: Tensor, eps: float) -> Tensor:
    """Eq. (2): the density of the rotation angle of an IGSO3 draw on ``[0, pi]``."""
    return igso3_density(omega, eps) * (1 - torch.cos(omega.to(torch.float64))) / math.pi


class IGSO3(nn.Module):
    """Samplers of IGSO3 for a list of scales ``eps``: per scale, the angle's CDF tabulated on ``points`` angles
    from 0 to ``min(pi, 12 eps)`` (trapezoid rule on Eq. 2, normalised to end at 1) and inverted by linear
    interpolation. A scale of 0 gives the identity. The tables are non-persistent buffers (rebuilt from the
    scales, never stored in checkpoints)."""

    def __init__(self, scales: Sequence[float], points: int = 2048) -> None:
        super().__init__()
        if any(not (s >= 0 and math.isfinite(s)) for s in scales):
            raise ConfigError(f"IGSO3 scales must be finite and >= 0, got {list(scales)}")
        grids, cdfs = [], []
        for eps in scales:
            top = min(math.pi, 12 * eps) if eps > 0 else 1e-9
            grid = torch.linspace(0, top, points, dtype=torch.float64)
            density = igso3_angle_density(grid, eps) if eps > 0 else torch.ones_like(grid)
            steps = (density[1:] + density[:-1]) / 2 * (grid[1:] - grid[:-1])
            cdf = torch.cat([steps.new_zeros(1), torch.cumsum(steps.clamp_min(0), 0)])
            grids.append(grid)
            cdfs.append(cdf / cdf[-1])
        self.register_buffer("grid", torch.stack(grids), persistent=False)
        self.register_buffer("cdf", torch.stack(cdfs), persistent=False)
        self.scales = list(scales)

    def sample_angle(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Angles (float64) of draws at the scales ``self.scales[index]``, one per element of ``index``."""
        u = torch.rand(index.shape, generator=generator, dtype=torch.float64).to(self.cdf.device)
        flat, cdf, grid = u.reshape(-1), self.cdf[index.reshape(-1)], self.grid[index.reshape(-1)]
        hi = torch.searchsorted(cdf, flat[:, None]).clamp(1, cdf.shape[1] - 1)
        lo = hi - 1
        c0, c1 = cdf.gather(1, lo).squeeze(1), cdf.gather(1, hi).squeeze(1)
        g0, g1 = grid.gather(1, lo).squeeze(1), grid.gather(1, hi).squeeze(1)
        weight = ((flat - c0) / (c1 - c0).clamp_min(1e-300)).clamp(0, 1)
        return (g0 + weight * (g1 - g0)).reshape(index.shape)

    def sample(self, index: Tensor, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
               ) -> Tensor:
        """Rotation vectors ``[*index.shape, 3]`` of IGSO3 draws: tabulated angle, uniform axis."""
        angle = self.sample_angle(index, generator)
        axis = torch.randn(*index.shape, 3, generator=generator, dtype=torch.float64).to(angle.device)
        return (torch.nn.functional.normalize(axis, dim=-1) * angle[..., None]).to(dtype)


# -- residue frames and backbone atoms -------------------------------------------------------------
N_LOCAL = (1.458 * math.cos(math.radians(111.0)), 1.458 * math.sin(math.radians(111.0)), 0.0)
C_LOCAL = (1.525, 0.0, 0.0)
O_BOND = 1.231


def backbone_from_frames(rotation: Tensor, ca: Tensor) -> Tensor:
    """N, CA, C ``[..., 3, 3]`` (atom, xyz) at ideal local coordinates of frames ``(rotation [..., 3, 3],
    ca [..., 3])`` in A."""
    local = torch.tensor([N_LOCAL, (0.0, 0.0, 0.0), C_LOCAL], dtype=ca.dtype, device=ca.device)
    return ca[..., None, :] + local @ rotation.transpose(-1, -2)


def place_oxygen(ca: Tensor, c: Tensor, n_next: Tensor) -> Tensor:
    """Carbonyl O ``[..., 3]``: in the plane CA, C, N(i+1), on the bisector of the angle CA-C-N(i+1), outside."""
    u = torch.nn.functional.normalize(c - ca, dim=-1) + torch.nn.functional.normalize(c - n_next, dim=-1)
    return c + O_BOND * torch.nn.functional.normalize(u, dim=-1)
