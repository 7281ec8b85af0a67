"""The first stage of a latent diffusion model: a convolutional KL autoencoder trained on images
(``zoo.dit.autoencoder``; Rombach et al. 2022), whose latents a DiT then models
(``ConditionalDiT(autoencoder=...)``, as DiT does on Stable Diffusion's VAE latents).

Training (``fit``): images in [0, 1] are mapped to [-1, 1]; the loss per image is

    ||x - D(mu + s * eps)||^2 / (C H W) + kl_weight * KL(q(z|x) || N(0, I)) / (c h w)

(both terms per element, so ``kl_weight`` does not depend on the image or latent size).

Validation logs the reconstruction error of the posterior mean (``val/mse`` in [-1, 1] units;
``val/psnr`` in dB for images in [0, 1], from the squared error summed over the whole set, not a
mean of per-batch values) and, while fitting, measures the standard deviation of the posterior
means over the validation set; ``1 / std`` becomes the network's ``latent_scale`` (saved with the
weights), so the latents a diffusion model sees have unit variance. (The sanity check before
training and a later ``validate`` leave the scale alone.)

``test`` logs the same metrics and writes ``reconstructions.png`` to the run folder: test images
(odd rows) above their reconstructions (even rows).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from zoo.core.module import ZooModule
from zoo.core.plots import image_grid
from zoo.dit.autoencoder import ConvAutoencoder
from zoo.dit.optim import adamw_cosine

SHOWN = 32  # test images drawn in reconstructions.png


class ImageAutoencoder(ZooModule):
    """Convolutional KL autoencoder on images in [0, 1] (module docstring).

    Args:
        in_channels, input_size: images are ``[B, in_channels, input_size, input_size]``.
        latent_channels: channels of the latent grid.
        widths: channel widths per resolution; the latent side is ``input_size / 2 ** (len(widths) - 1)``.
        kl_weight: weight of the per-element KL term.
        lr, weight_decay: AdamW, cosine decay to 0 over the run.
    """

    def __init__(
        self,
        in_channels: int = 1,
        input_size: int = 8,
        latent_channels: int = 2,
        widths: list[int] = [32, 64],  # noqa: B006 (LightningCLI reads the default)
        kl_weight: float = 1e-4,
        lr: float = 0.002,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = ConvAutoencoder(in_channels, latent_channels, widths)
        self.net.latent_shape(input_size)  # checks that input_size is divisible by the factor
        self._sums = torch.zeros(5, dtype=torch.float64)
        self._shown: list[Tensor] = []

    def _x(self, images: Tensor) -> Tensor:
        h = self.hparams
        self.check_shape("images", images, (None, h.in_channels, h.input_size, h.input_size),
                         " (set model.init_args.in_channels / input_size to match the data)")
        return images * 2 - 1

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = self._x(batch[0])
        recon, mean, logvar = self.net(x)
        mse = F.mse_loss(recon, x)
        kl = ConvAutoencoder.kl(mean, logvar).mean() / mean[0].numel()
        loss = mse + self.hparams.kl_weight * kl
        self.log_train(batch_idx, loss=loss, mse=mse, kl=kl)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor, Tensor]:
        x = self._x(batch[0])
        mean, _ = self.net.encode(x)
        recon = self.net.decode(mean)
        errors = (recon - x).double().square()
        self._sums[:2] += torch.stack([errors.sum(), errors.new_tensor(errors.numel())])
        self.log(f"{stage}/mse", errors.mean().float(), prog_bar=stage == "val", sync_dist=True)
        return x, mean, recon

    def _log_psnr(self, stage: str) -> Tensor:
        """PSNR of images in [0, 1] over the whole set (their squared error is a quarter of the
        [-1, 1] one); also returns the reduced sums for the latent scale."""
        sums = self.trainer.strategy.reduce(self._sums, reduce_op="sum")
        if sums[1] > 0:
            self.log(f"{stage}/psnr", 10 * math.log10(4 * float(sums[1]) / max(float(sums[0]), 1e-12)))
        return sums

    def _reset(self) -> None:
        # squared-error sum, element count; then count, sum and squared sum of the posterior means
        self._sums = torch.zeros(5, dtype=torch.float64, device=self.device)

    def on_validation_epoch_start(self) -> None:
        self._reset()

    def on_test_epoch_start(self) -> None:
        self._reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        _, mean, _ = self._evaluate(batch, "val")
        m = mean.detach().double()
        self._sums[2:] += torch.stack([m.new_tensor(m.numel()), m.sum(), m.square().sum()])

    def on_validation_epoch_end(self) -> None:
        """``val/psnr``; while fitting (not in the sanity check), ``latent_scale = 1 / std`` of the
        validation set's posterior means (all ranks' sums)."""
        count, total, squares = self._log_psnr("val")[2:].tolist()
        if self.trainer.sanity_checking or self.trainer.state.fn != TrainerFn.FITTING or count < 2:
            return
        variance = (squares - total * total / count) / (count - 1)
        self.net.latent_scale.fill_(1 / math.sqrt(max(variance, 1e-12)))
        self.log("val/latent_std", math.sqrt(max(variance, 0.0)))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _, recon = self._evaluate(batch, "test")
        if sum(len(s) for s in self._shown) < SHOWN:
            self._shown.append(torch.stack([x, recon.clamp(-1, 1)], 1).cpu())

    def on_test_epoch_end(self) -> None:
        """``test/psnr`` and ``reconstructions.png``: rows of 8 test images, each followed by a row of
        their reconstructions."""
        self._log_psnr("test")
        path = self.output_path("reconstructions.png")  # every rank: trainer.log_dir is a collective
        if not self._shown:
            return
        pairs = torch.cat(self._shown)[:SHOWN]  # [N, 2, C, H, W]
        self._shown.clear()
        rows = []
        for i in range(0, len(pairs), 8):
            row = pairs[i:i + 8]
            blank = row.new_full((8 - len(row), *row.shape[1:]), -1.0)
            rows += [torch.cat([row[:, 0], blank[:, 0]]), torch.cat([row[:, 1], blank[:, 1]])]
        captions = [c for row in range(0, len(pairs), 8) for c in
                    [""] * 8 + ["recon"] * min(8, len(pairs) - row) + [""] * (8 - min(8, len(pairs) - row))]
        image_grid((torch.cat(rows) + 1) / 2, path, captions)

    # -- what a latent diffusion model calls -------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Unit-scale latents of images in [0, 1]."""
        return self.net.encode_latent(self._x(images))

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images in [0, 1] from unit-scale latents."""
        return ((self.net.decode_latent(latents) + 1) / 2).clamp(0, 1)

    def configure_optimizers(self):
        """``ZooModule``'s AdamW and cosine schedule, fused on CUDA (``zoo.dit.optim``)."""
        return adamw_cosine(self)
