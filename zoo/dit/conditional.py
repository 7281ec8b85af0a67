"""Conditional Diffusion Transformer with classifier-free guidance (Peebles & Xie 2023; the
in-context conditional DiT of Hu et al., "On Statistical Rates of Conditional Diffusion
Transformers", ICLR 2025).

Training (``fit``): images in [0, 1] are mapped to ``x_0 in [-1, 1]``; a DiT (``zoo.dit.model``)
learns to predict the noise (or ``v``) of ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``
(``zoo.dit.diffusion``), with labels dropped to the null class with probability
``class_dropout`` so that one network is both the conditional and the unconditional model.

An exponential moving average of the weights,

    theta_ema <- d theta_ema + (1 - d) theta,   d = min(ema_decay, (1 + n) / (10 + n))

after optimizer step ``n``, is kept as a second network (the warm-up ``d`` lets the average
forget the zero-initialized start within a short run: with a fixed 0.999, 600 steps still weigh
the initial weights by 0.55); it is saved in every checkpoint (so a resumed run continues the
same average), used for validation and for sampling.

Sampling (``predict``): for each batch of labels, DDIM (``sample_steps``, ``eta``) or DDPM
(``sample_steps = 0``) with the EMA network under classifier-free guidance

    eps = eps(x, t, null) + cfg_scale (eps(x, t, y) - eps(x, t, null))

on all channels. ``predict`` writes ``samples.pt`` (samples in [0, 1] and their labels) and
``samples.png`` (one row per class) to the run folder.

The same model on an autoencoder's latents is :class:`zoo.dit.latent_image.LatentImageDiT`.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor

from zoo.core.errors import ConfigError
from zoo.core.module import ZooModule
from zoo.core.plots import image_grid
from zoo.dit.diffusion import GaussianDiffusion, guided
from zoo.dit.model import dit
from zoo.dit.optim import adamw

# ConditionalDiT checks labels in on_before_batch_transfer (on the CPU); Lightning warns whenever a
# LightningModule overrides that hook while a DataModule supplies the data, which is the intent here.
warnings.filterwarnings("ignore", r"You have overridden `on_before_batch_transfer` in `LightningModule` but have "
                                  r"passed in a `LightningDataModule`")


class ConditionalDiT(ZooModule):
    """DiT + Gaussian diffusion + EMA + classifier-free guidance, on images in [0, 1].

    Args:
        size: an entry of ``zoo.dit.model.DIT_SIZES`` (``DiT-tiny``, ``DiT-S``, ``DiT-B``, ``DiT-L``, ``DiT-XL``).
        patch_size: 2, 4 or 8 (``input_size`` must be divisible by it).
        input_size, in_channels: image side and channels.
        num_classes: labels ``0..num_classes-1``; the null class is ``num_classes``; 0 = unconditional.
        class_dropout: probability of training a label as null (CFG).
        conditioning: ``adaln_zero`` or ``in_context``.
        num_steps, schedule, prediction: the diffusion (``linear``/``cosine``; ``epsilon``/``v``).
        ema_decay: EMA decay per optimizer step (the DiT paper's 0.9999 suits 400k steps; 0.999 small runs).
        cfg_scale: guidance weight for sampling (1 = conditional model, no guidance).
        sample_steps: DDIM steps for sampling; 0 = DDPM with all ``num_steps``.
        eta: DDIM noise (0 deterministic, 1 = DDPM's variance).
        sample_seed: seed of the sampling noise (same seed, same samples).
        compile: run the DiT and its EMA copy through ``torch.compile`` (in place, so the
            checkpoint keys stay the same): training, validation and sampling forwards. The first
            steps pay the compilation; off by default.
    """

    def __init__(
        self,
        size: str = "DiT-tiny",
        patch_size: int = 2,
        input_size: int = 8,
        in_channels: int = 1,
        num_classes: int = 10,
        class_dropout: float = 0.1,
        conditioning: str = "adaln_zero",
        num_steps: int = 1000,
        schedule: str = "linear",
        prediction: str = "epsilon",
        ema_decay: float = 0.999,
        lr: float = 0.0003,
        weight_decay: float = 0.0,
        cfg_scale: float = 1.5,
        sample_steps: int = 50,
        eta: float = 0.0,
        sample_seed: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= ema_decay < 1:
            raise ConfigError(f"ema_decay must lie in [0, 1), got {ema_decay}")
        if cfg_scale < 0:
            raise ConfigError(f"cfg_scale must be >= 0, got {cfg_scale}")
        if not 0 <= sample_steps <= num_steps:
            raise ConfigError(f"sample_steps must lie in [0, num_steps={num_steps}] (0 = DDPM), got {sample_steps}")
        self.save_hyperparameters()
        self.shape = self.model_shape()
        self.net = dit(size, patch_size, input_size=self.shape[1], in_channels=self.shape[0], num_classes=num_classes,
                       class_dropout=class_dropout, conditioning=conditioning)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        if compile:
            self.net.compile()
            self.ema.compile()
        self.diffusion = GaussianDiffusion(num_steps, schedule, prediction=prediction)
        self._samples: list[tuple[Tensor, Tensor]] = []

    #: Clip the predicted ``x_0`` to [-1, 1] while sampling (pixels; latents are not clipped).
    clip_x0 = True

    def model_shape(self) -> tuple[int, int, int]:
        """``(channels, side, side)`` of what the DiT models: here the image itself."""
        return (self.hparams.in_channels, self.hparams.input_size, self.hparams.input_size)

    # -- training ----------------------------------------------------------------------------
    def check_images(self, images: Tensor) -> None:
        h = self.hparams
        self.check_shape("images", images, (None, h.in_channels, h.input_size, h.input_size),
                         " (set model.init_args.in_channels / input_size to match the data)")

    def encode(self, images: Tensor) -> Tensor:
        """What the DiT models: images in [0, 1] mapped to [-1, 1]."""
        self.check_images(images)
        return images * 2 - 1

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`encode`: images in [0, 1] (clamped)."""
        return ((x + 1) / 2).clamp(0, 1)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Checks the batch's labels while they are still on the CPU, where reading them costs no
        wait for the device (the DiT itself reads label values on the CPU only)."""
        if (self.hparams.num_classes and isinstance(batch, (tuple, list)) and len(batch) == 2
                and isinstance(batch[1], Tensor) and batch[1].device.type == "cpu" and len(batch[1])):
            self._check_labels(batch[1], " (set model.init_args.num_classes to match the data)")
        return batch

    def _check_labels(self, labels: Tensor, hint: str = "") -> None:
        n = self.hparams.num_classes
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= n:
            raise ConfigError(f"labels must lie in [0, {n - 1}], got {low}..{high}{hint}")

    def _labels(self, labels: Tensor) -> Tensor | None:
        return labels if self.hparams.num_classes > 0 else None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = self.diffusion.training_loss(self.net, self.encode(images), y=self._labels(labels))
        self.log_train(batch_idx, loss=loss)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """``theta_ema <- d theta_ema + (1 - d) theta`` with the warm-up ``d`` (module docstring). The
        DiT's only buffer is its fixed position table, so there are no running statistics to copy."""
        step = self.global_step
        decay = min(self.hparams.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.net.parameters()), 1 - decay)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._ema_loss(batch, batch_idx), prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("test/loss", self._ema_loss(batch, batch_idx), sync_dist=True)

    def _ema_loss(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Loss of the EMA network at timesteps and noise fixed by the batch index (comparable across epochs)."""
        images, labels = batch
        generator = torch.Generator(device=images.device).manual_seed(batch_idx)
        return self.diffusion.training_loss(self.ema, self.encode(images), generator=generator, y=self._labels(labels))

    def configure_optimizers(self):
        return adamw(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, labels: Tensor, cfg_scale: float | None = None, steps: int | None = None,
               generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
        """Images in [0, 1] of the given classes ``[N]`` from the EMA network (module docstring)."""
        h = self.hparams
        scale = h.cfg_scale if cfg_scale is None else cfg_scale
        steps = h.sample_steps if steps is None else steps
        if scale < 0:
            raise ConfigError(f"cfg_scale must be >= 0, got {scale}")
        if h.num_classes:
            self._check_labels(labels)  # once (one host sync); the DiT skips it on an accelerator
        shape = (len(labels), *self.shape)
        model, kwargs = self.ema, {}
        if h.num_classes:
            model, kwargs = guided(self.ema, scale, self.ema.null_class), {"y": labels}
        if steps == 0:
            x = self.diffusion.ddpm_sample(model, shape, generator=generator, progress=progress, clip_x0=self.clip_x0, **kwargs)
        else:
            x = self.diffusion.ddim_sample(model, shape, steps, eta=h.eta, generator=generator, progress=progress,
                                           clip_x0=self.clip_x0, **kwargs)
        return self.decode(x)

    def on_predict_epoch_start(self) -> None:
        self._samples.clear()
        self._generator = torch.Generator(device=self.device).manual_seed(self.hparams.sample_seed)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One sample per label of the batch."""
        _, labels = batch
        samples = self.sample(labels, generator=self._generator)
        self._samples.append((samples.cpu(), labels.cpu()))
        return samples

    def on_predict_epoch_end(self) -> None:
        """``samples.pt`` ({"samples", "labels"}) and ``samples.png`` (up to 8 per class, a row per class)."""
        path, grid = self.output_path("samples.pt"), self.output_path("samples.png")  # every rank: a collective
        if not self._samples:
            return
        samples = torch.cat([s for s, _ in self._samples])
        labels = torch.cat([y for _, y in self._samples])
        self._samples.clear()
        torch.save({"samples": samples, "labels": labels}, path)
        rows = [samples[labels == c][:8] for c in labels.unique().tolist()]
        shown = torch.cat([torch.cat([r, torch.zeros(8 - len(r), *r.shape[1:])]) for r in rows])
        captions = [str(int(c)) if i < len(r) else "" for c, r in zip(labels.unique().tolist(), rows) for i in range(8)]
        image_grid(shown, grid, captions)
        print(f"wrote {len(samples)} samples to {path}")
