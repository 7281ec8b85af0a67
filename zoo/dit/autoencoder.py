"""A small convolutional autoencoder: the image latent space of a latent diffusion model
(Rombach et al. 2022, the first stage that DiT's latent models train on; here small enough for
8x8 digits and 28x28 / 32x32 images on a CPU).

Encoder. A 3x3 convolution to ``widths[0]`` channels, then per further width a residual block and a
stride-2 3x3 convolution (so ``len(widths) - 1`` halvings: the downsampling factor is
``f = 2 ** (len(widths) - 1)``), a last residual block, GroupNorm + SiLU and a 3x3 convolution to
``2 * latent_channels`` channels: the mean ``mu`` and log-variance ``log s^2`` of a diagonal
Gaussian posterior ``q(z | x) = N(mu, diag(s^2))`` on a ``latent_channels x H/f x W/f`` grid.

Decoder. The mirror image: a 3x3 convolution from the latent, a residual block, per level a
nearest-neighbour 2x upsampling + 3x3 convolution and a residual block, GroupNorm + SiLU and a 3x3
convolution to the image channels. Images live in [-1, 1]; the decoder's output is not squashed
(the reconstruction loss is a plain squared error).

Residual block: ``x + conv(SiLU(GN(conv(SiLU(GN(x))))))`` with the second convolution
zero-initialised, so every block starts as the identity.

Training objective (``kl``): ``||x - D(z)||^2 + beta KL(q(z|x) || N(0, I))`` with
``z = mu + s * eps``, where per image

    KL = 1/2 sum_i (mu_i^2 + s_i^2 - 1 - log s_i^2).

A small ``beta`` (the KL-regularised autoencoder of latent diffusion) keeps the latent's scale in
check without blurring the reconstructions.

Latent scale. A diffusion model wants latents of unit variance; ``latent_scale`` (a buffer, saved
with the weights) is ``1 / std(mu)`` over a data set, set by whoever trains the autoencoder
(``zoo.dit.autoencoder_module.ImageAutoencoder`` after each validation pass), and
:meth:`encode_latent` / :meth:`decode_latent` apply it (Stable Diffusion's 0.18215, measured
instead of hard-coded).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from zoo.core.errors import ConfigError, ShapeError


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """``x + conv(SiLU(GN(conv(SiLU(GN(x))))))``, the last convolution zero-initialised."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ConvAutoencoder(nn.Module):
    """Convolutional KL autoencoder (module docstring).

    Args:
        in_channels: image channels.
        latent_channels: channels of the latent grid.
        widths: channel widths per resolution, finest first; ``f = 2 ** (len(widths) - 1)``.
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 4, widths: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if in_channels < 1 or latent_channels < 1 or not widths or min(widths) < 1:
            raise ConfigError(f"ConvAutoencoder needs in_channels, latent_channels >= 1 and a non-empty list of "
                              f"positive widths, got in_channels={in_channels}, latent_channels={latent_channels}, "
                              f"widths={widths}")
        self.in_channels, self.latent_channels, self.widths = in_channels, latent_channels, widths
        self.factor = 2 ** (len(widths) - 1)

        enc: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for a, b in zip(widths, widths[1:]):
            enc += [ResBlock(a), nn.Conv2d(a, b, 3, stride=2, padding=1)]
        enc += [ResBlock(widths[-1]), _norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1), ResBlock(widths[-1])]
        for a, b in zip(widths[::-1], widths[-2::-1]):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1), ResBlock(b)]
        dec += [_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("latent_scale", torch.tensor(1.0))

    def latent_shape(self, input_size: int) -> tuple[int, int, int]:
        """``(latent_channels, input_size / f, input_size / f)``; the size must be divisible by ``f``."""
        if input_size % self.factor:
            raise ConfigError(f"ConvAutoencoder: image size {input_size} is not divisible by the downsampling "
                              f"factor {self.factor} (2 ** (len(widths) - 1), widths={self.widths})")
        return self.latent_channels, input_size // self.factor, input_size // self.factor

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ShapeError(f"ConvAutoencoder: images must have shape [B, {self.in_channels}, H, W] with H and W "
                             f"divisible by {self.factor}, got {list(x.shape)}")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance ``[B, latent_channels, H/f, W/f]`` of images in [-1, 1]."""
        self._check(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        """Images (about [-1, 1]) from latents ``[B, latent_channels, h, w]``."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ShapeError(f"ConvAutoencoder: latents must have shape [B, {self.latent_channels}, h, w], "
                             f"got {list(z.shape)}")
        return self.decoder(z)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(reconstruction, mean, logvar)`` with ``z = mean + s * eps`` drawn from the posterior."""
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.decode(mean + torch.exp(0.5 * logvar) * eps), mean, logvar

    @staticmethod
    def kl(mean: Tensor, logvar: Tensor) -> Tensor:
        """``KL(N(mean, exp(logvar)) || N(0, I))`` per image, summed over the latent: ``[B]``."""
        return 0.5 * (mean.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)

    def encode_latent(self, x: Tensor) -> Tensor:
        """Unit-scale latents for diffusion: the posterior mean of images in [-1, 1] times ``latent_scale``."""
        return self.encode(x)[0] * self.latent_scale

    def decode_latent(self, z: Tensor) -> Tensor:
        """Inverse of :meth:`encode_latent`'s scaling, then the decoder."""
        return self.decode(z / self.latent_scale)
