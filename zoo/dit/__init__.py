"""Diffusion Transformers: conditional and latent (Peebles & Xie 2023, "Scalable Diffusion Models
with Transformers"; Hu et al., "On Statistical Rates of Conditional Diffusion Transformers", ICLR
2025; Hu et al., "On Statistical Rates and Provably Efficient Criteria of Latent Diffusion
Transformers (DiTs)", NeurIPS 2024).

Paper -> code:
- The DiT (patchify, adaLN-Zero or in-context conditioning, sizes DiT-tiny..XL): ``model``.
- Gaussian diffusion (schedules, the loss, DDPM and DDIM samplers, classifier-free guidance): ``diffusion``.
- Class-conditional DiT on images with EMA and guidance: ``conditional.ConditionalDiT``.
- Latent diffusion on images: the autoencoder (``autoencoder``, ``autoencoder_module.ImageAutoencoder``)
  and the DiT on its latents (``latent_image.LatentImageDiT``).
- The latent-DiT theory's setting (data near a linear subspace, score ``W f(W^T x)``) and its rates:
  ``latent.LatentDiT``.
- Distances to the truth (Gaussian W2, MMD, sliced W2) and FID features: ``metrics``.

Configs: ``configs/dit/``; results: ``docs/dit.md``.
"""

from zoo.dit.autoencoder import ConvAutoencoder
from zoo.dit.autoencoder_module import ImageAutoencoder
from zoo.dit.conditional import ConditionalDiT
from zoo.dit.diffusion import GaussianDiffusion, guided
from zoo.dit.latent import LatentDiT
from zoo.dit.latent_image import LatentImageDiT
from zoo.dit.model import DIT_SIZES, DiT, dit

__all__ = [
    "DIT_SIZES", "ConditionalDiT", "ConvAutoencoder", "DiT", "GaussianDiffusion", "ImageAutoencoder", "LatentDiT",
    "LatentImageDiT", "dit", "guided",
]
