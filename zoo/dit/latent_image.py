"""The conditional DiT on the latents of a trained image autoencoder (latent diffusion, Rombach et
al. 2022, with the DiT of Peebles & Xie 2023 as the denoiser).

``autoencoder`` is a registered name or a checkpoint path of a trained
``ImageAutoencoder`` (``zoo.dit.autoencoder_module``). The DiT models the autoencoder's unit-scale
latents ``z_0 = s * mu(x)`` instead of pixels, on the latent grid (``input_size / f`` per side,
``latent_channels`` channels; ``patch_size`` counts latent cells), and samples are decoded. The
autoencoder is frozen and kept inside the module (its weights are in every checkpoint); latents are
not clipped during sampling (pixels are, to [-1, 1]). The autoencoder's architecture is recorded as
the hyperparameter ``autoencoder_arch`` when the file is first read, so a checkpoint rebuilds it
and loads its weights from its own ``state_dict``: it needs neither the autoencoder's file nor its
registry entry any more.

Everything else (training loss, EMA, classifier-free guidance, DDIM/DDPM sampling, ``predict``'s
files) is :class:`zoo.dit.conditional.ConditionalDiT`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from zoo.core.errors import CheckpointError, ConfigError
from zoo.core.registry import checkpoint_path, verify_checkpoint
from zoo.dit.autoencoder import ConvAutoencoder
from zoo.dit.conditional import ConditionalDiT

AUTOENCODER_KEYS = ("in_channels", "latent_channels", "widths")


def load_autoencoder(spec: str) -> ConvAutoencoder:
    """The frozen network of a trained ``ImageAutoencoder``: ``spec`` is a registered name
    (``zoo.list_pretrained()``) or a checkpoint path. (It has no dropout and no batch statistics,
    so the train/eval mode Lightning sets does not change it.)"""
    path = checkpoint_path(spec)
    checkpoint = verify_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters", {})
    if any(key not in hparams for key in AUTOENCODER_KEYS):
        raise CheckpointError(f"autoencoder {spec!r}: {path} is not an ImageAutoencoder checkpoint "
                              f"(its hyperparameters lack {', '.join(AUTOENCODER_KEYS)})")
    net = ConvAutoencoder(*(hparams[key] for key in AUTOENCODER_KEYS))
    net.load_state_dict({k[4:]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")})
    return net.requires_grad_(False)


class LatentImageDiT(ConditionalDiT):
    """:class:`ConditionalDiT` on the unit-scale latents of a frozen ``ImageAutoencoder``.

    Args (the others are :class:`ConditionalDiT`'s; ``patch_size`` counts latent cells, default 1):
        autoencoder: registered name or checkpoint path of an ``ImageAutoencoder`` whose latents
            the DiT models (module docstring).
        autoencoder_arch: filled in from the autoencoder's file (``in_channels``, ``latent_channels``,
            ``widths``) and saved with the checkpoint, which then rebuilds the autoencoder without
            the file; not meant to be set by hand.
    """

    clip_x0 = False

    def __init__(self, autoencoder: str = "digits-ae", autoencoder_arch: dict[str, Any] | None = None,
                 patch_size: int = 1, **kwargs) -> None:
        super().__init__(patch_size=patch_size, **kwargs)

    def model_shape(self) -> tuple[int, int, int]:
        """Builds the frozen autoencoder (from ``autoencoder_arch`` in a checkpoint, whose
        ``state_dict`` then holds its weights; else from the file, recording the architecture) and
        returns its latent grid ``(latent_channels, input_size / f, input_size / f)``."""
        h = self.hparams
        if h.autoencoder_arch is not None:
            self.autoencoder = ConvAutoencoder(**h.autoencoder_arch).requires_grad_(False)
        else:
            self.autoencoder = load_autoencoder(h.autoencoder)
            h.autoencoder_arch = {key: getattr(self.autoencoder, key) for key in AUTOENCODER_KEYS}
        if self.autoencoder.in_channels != h.in_channels:
            raise ConfigError(f"autoencoder {h.autoencoder!r} encodes {self.autoencoder.in_channels}-channel images, "
                              f"but in_channels is {h.in_channels}")
        return self.autoencoder.latent_shape(h.input_size)

    def encode(self, images: Tensor) -> Tensor:
        """The autoencoder's unit-scale latents of images in [0, 1]."""
        self.check_images(images)
        with torch.no_grad():
            return self.autoencoder.encode_latent(images * 2 - 1)

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """Latents to images in [0, 1] (clamped)."""
        return ((self.autoencoder.decode_latent(x) + 1) / 2).clamp(0, 1)
