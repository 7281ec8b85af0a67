"""Data on a low-dimensional linear subspace: the synthetic setting of the latent-DiT theory
(``x = B h`` with ``B in R^{D x d0}`` of orthonormal columns and ``h`` sub-Gaussian in ``R^{d0}``).

The basis ``B`` is drawn once from ``seed`` (QR of a Gaussian ``D x d0`` matrix, signs fixed so
that ``R`` has a positive diagonal) from a stream of its own, so it never shares draws with the
splits. ``h ~ N(0, I_{d0})``, or with ``mixture = K > 0`` a class-conditional Gaussian mixture:
label ``k`` uniform on ``0..K-1``, ``h = mu_k + N(0, I)`` with means ``mu_k ~ N(0, 4 I)`` drawn
from the seed too (``self.means``).

For ``h ~ N(0, I)`` the noise the VP forward process ``x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps``
(``zoo.dit.diffusion``) hides is known in closed form: ``x_t ~ N(0, Sigma_t)`` with
``Sigma_t = abar B B^T + (1 - abar) I``, whose inverse is ``B B^T + (I - B B^T) / (1 - abar)``, so

    eps*(x_t) = E[eps | x_t] = -sqrt(1 - abar) grad log p_t(x_t) = sqrt(1 - abar) Sigma_t^{-1} x_t
              = sqrt(1 - abar) B B^T x_t + (I - B B^T) x_t / sqrt(1 - abar)        (``true_eps``).

With the mixture it is closed form too. In latent coordinates ``z_t = B^T x_t`` each component is
``N(sqrt(abar) mu_k, I)`` (``abar I + (1 - abar) I``) and the orthogonal part is ``N(0, (1 - abar) I)``
whatever the label, so with the posterior ``w_k(z_t) = softmax_k(-||z_t - sqrt(abar) mu_k||^2 / 2)``

    eps*(x_t) = sqrt(1 - abar) B (z_t - sqrt(abar) sum_k w_k mu_k) + (I - B B^T) x_t / sqrt(1 - abar),

which is the Gaussian case for ``mu = 0``: a nonlinear target the DiT has to learn.
"""

from __future__ import annotations

import torch
from torch import Tensor

from data_modules.synthetic import SyntheticDataModule
from zoo.core.errors import ConfigError, ShapeError

BASIS_STREAM = 1 << 40  # the basis (and mixture means) generator is seeded with BASIS_STREAM + seed
MEAN_STD = 2.0  # std of the mixture means


class SubspaceDataModule(SyntheticDataModule):
    """Batches ``(x [B, ambient_dim], label [B])`` with ``x = B h`` (module docstring).

    Args:
        ambient_dim: D.
        latent_dim: d0, the subspace's dimension (1 <= d0 <= D).
        mixture: 0 for ``h ~ N(0, I)`` (labels all 0); K > 0 for a K-component Gaussian mixture.
        num_train, num_val, num_test, batch_size, num_workers, seed: as ``SyntheticDataModule``.
    """

    def __init__(
        self,
        ambient_dim: int = 32,
        latent_dim: int = 4,
        mixture: int = 0,
        num_train: int = 1024,
        num_val: int = 256,
        num_test: int = 256,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(num_train, num_val, num_test, batch_size, num_workers, seed)
        if not 1 <= latent_dim <= ambient_dim:
            raise ConfigError(f"latent_dim must lie in [1, ambient_dim={ambient_dim}], got latent_dim={latent_dim}")
        if mixture < 0:
            raise ConfigError(f"mixture must be >= 0 (0 = one standard Gaussian), got {mixture}")
        self.ambient_dim, self.latent_dim, self.mixture = ambient_dim, latent_dim, mixture
        generator = torch.Generator().manual_seed(BASIS_STREAM + seed)
        q, r = torch.linalg.qr(torch.randn(ambient_dim, latent_dim, generator=generator, dtype=torch.float64))
        self.basis_float64 = q * torch.sign(torch.diagonal(r))  # [D, d0], B^T B = I to float64 rounding
        self.basis = self.basis_float64.float()  # the data's dtype
        self.means = torch.randn(mixture, latent_dim, generator=generator) * MEAN_STD if mixture else None

    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        h = torch.randn(n, self.latent_dim, generator=generator)
        if self.mixture:
            labels = torch.randint(0, self.mixture, (n,), generator=generator)
            h = h + self.means[labels]
        else:
            labels = torch.zeros(n, dtype=torch.long)
        return h @ self.basis.T, labels

    def true_eps(self, x_t: Tensor, abar: float | Tensor, one_minus_abar: float | Tensor | None = None) -> Tensor:
        """``E[eps | x_t]`` (module docstring), in ``x_t``'s dtype and device.

        ``abar`` is a number or a tensor ``[B]`` (one per row of ``x_t [B, D]``); pass
        ``one_minus_abar`` as well where ``abar`` is so close to 1 that ``1 - abar`` rounds.
        """
        if x_t.dim() != 2 or x_t.shape[1] != self.ambient_dim:
            raise ShapeError(f"x_t must have shape [*, {self.ambient_dim}], got {list(x_t.shape)}")
        kwargs = dict(device=x_t.device, dtype=x_t.dtype)
        abar = torch.as_tensor(abar, **kwargs)
        one_minus = 1 - abar if one_minus_abar is None else torch.as_tensor(one_minus_abar, **kwargs)
        if abar.dim() == 1:
            abar = abar[:, None]
        if one_minus.dim() == 1:
            one_minus = one_minus[:, None]
        if (one_minus <= 0).any() or (one_minus > 1).any():
            raise ConfigError("1 - abar must lie in (0, 1]")
        basis = self.basis_float64.to(**kwargs)  # float32 rounding of B^T B = I would grow as 1 / (1 - abar)
        z = x_t @ basis
        inside = z @ basis.T
        if self.mixture:
            centres = abar.sqrt()[..., None] * self.means.to(**kwargs)  # [B or 1, K, d0]
            weights = torch.softmax(-0.5 * ((z[:, None, :] - centres) ** 2).sum(-1), dim=-1)  # [B, K]
            z = z - (weights[..., None] * centres).sum(1)
        b = one_minus.sqrt()
        return b * (z @ basis.T) + (x_t - inside) / b
