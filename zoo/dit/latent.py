"""Latent Diffusion Transformer on a linear latent space (Hu et al., "On Statistical Rates and
Provably Efficient Criteria of Latent Diffusion Transformers (DiTs)", NeurIPS 2024).

The data ``x in R^D`` lie near a subspace of dimension ``d0``. A linear encoder/decoder ``W``
(``D x d0``; stored as ``encoder = nn.Linear(D, d0, bias=False)``, so ``W = encoder.weight^T``,
encode ``z = W^T x``, decode ``W z``, initialised with orthonormal columns) is learned jointly
with a DiT ``f`` (``zoo.dit.model``) that runs on the latents. The paper's score network
``s(x, t) = W f(W^T x, t) / sigma_t - x / sigma_t`` (``sigma_t = 1 - abar_t``, a variance)
is, as the noise prediction ``eps = -sqrt(1 - abar_t) s`` of ``zoo.dit.diffusion``,

    eps_theta(x_t, t) = (x_t - W f(W^T x_t, t)) / sqrt(1 - abar_t).

With orthonormal ``W`` the component of ``x_t`` outside ``W``'s column space is mapped in closed
form, ``(I - W W^T) x_t / sqrt(1 - abar_t)``, and only the latent part is learned. This is exact
for ``x = B h``, ``h ~ N(0, I)``: the true noise (``SubspaceDataModule.true_eps``)

    eps*(x_t) = sqrt(1 - abar) B B^T x_t + (I - B B^T) x_t / sqrt(1 - abar)

is ``eps_theta`` with ``W = B`` and ``f*(z, t) = abar_t z``: a target of the size of ``z`` at
every ``t`` (the scale ``1 / sqrt(1 - abar_t)`` sits outside the network, not in its output).

Skip connection (``skip``, on by default). The DiT starts as the zero function (adaLN-Zero) and
its LayerNorms discard the scale of ``z``, so a bare DiT is slow to represent the linear map
``abar_t z``, and while ``f = 0`` no gradient reaches ``W`` at all. With ``skip`` the network is

    f(z, t) = abar_t z + DiT(z, t),

the preconditioning of EDM (Karras et al. 2022) for latents of unit variance: ``abar_t z_t`` is
the best linear estimate of ``sqrt(abar_t) z_0`` for ``z_0`` of unit variance. It is exact for
``h ~ N(0, I)`` at ``W = B`` with ``DiT = 0``, so on that data the fit is mostly the learning of
``W``; the DiT learns what is not Gaussian (``mixture > 0``).

Latents as a DiT input (``layout``): ``grid`` reshapes ``z [B, d0]`` to a ``s x s`` one-channel
image (``d0 = s^2``; ``d0`` tokens of one value each, patch size 1, so attention mixes the latent
coordinates); ``token`` makes it one ``1 x 1`` pixel of ``d0`` channels (a single token: the
DiT reduces to its adaLN-modulated MLPs). The DiT is unconditional (labels are ignored); the time
enters by adaLN-Zero or, as in the theory paper, as an in-context token (``conditioning``).

Metrics: ``val/loss`` (the training loss at timesteps and noise fixed by the batch index),
``val/score_error`` (mean squared difference between ``eps_theta`` and the DataModule's
``true_eps`` on ``x_t`` from validation ``x_0`` at such timesteps; only with a DataModule that
has ``true_eps``, i.e. ``SubspaceDataModule``) and ``val/subspace_error``
``= ||P_W - B B^T||_F^2`` with ``P_W`` the projection onto ``W``'s column space (orthonormalised
by QR; only with a DataModule that has ``basis``). The same with ``test/``, where ``test`` also
draws ``eval_samples`` samples (DDPM ancestral over all steps for ``eval_steps = 0``, else DDIM with
``eval_steps`` steps) and logs their distance to the test set:
``test/mmd`` (unbiased squared MMD, Gaussian kernel at the median bandwidth), ``test/sliced_w2``
(squared sliced W2) and, for Gaussian latents (``mixture = 0``), ``test/w2``: the exact squared W2
between the samples' Gaussian fit and the true ``N(0, B B^T)`` (``zoo.dit.metrics``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from zoo.core.errors import ConfigError, ShapeError
from zoo.core.module import ZooModule
from zoo.dit.diffusion import GaussianDiffusion
from zoo.dit.metrics import gaussian_w2, mmd, sliced_wasserstein
from zoo.dit.model import dit
from zoo.dit.optim import adamw_cosine

LAYOUTS = ("grid", "token")


class LatentDiT(ZooModule):
    """Linear encoder/decoder ``W`` + DiT on the latents + Gaussian diffusion (module docstring).

    Args:
        ambient_dim: D, the data's dimension.
        latent_dim: d0 (1 <= d0 <= D); a perfect square for ``layout = grid``.
        size: an entry of ``zoo.dit.model.DIT_SIZES``.
        layout: ``grid`` (d0 tokens) or ``token`` (one token of d0 channels).
        conditioning: how the DiT sees the time, ``adaln_zero`` or ``in_context`` (``zoo.dit.model``).
        num_steps, schedule: the diffusion (epsilon prediction).
        skip: ``f(z, t) = abar_t z + DiT(z, t)`` (module docstring); false: ``f = DiT``.
        lr, weight_decay: AdamW for the DiT under a per-step cosine schedule (as ``ZooModule``).
        encoder_lr: AdamW's learning rate for ``W`` (no weight decay; Adam moves each entry by
            about ``lr`` per step, so a DiT-sized rate rotates ``W`` too slowly).
        eval_samples, eval_steps, sample_seed: the samples ``test`` draws (module docstring).
        compile: run the DiT through ``torch.compile`` (in place: the checkpoint keys stay the
            same), in training, evaluation and sampling; off by default.
    """

    def __init__(
        self,
        ambient_dim: int = 32,
        latent_dim: int = 4,
        size: str = "DiT-tiny",
        layout: str = "grid",
        conditioning: str = "adaln_zero",
        num_steps: int = 1000,
        schedule: str = "linear",
        skip: bool = True,
        lr: float = 0.001,
        encoder_lr: float = 0.01,
        weight_decay: float = 0.0,
        eval_samples: int = 512,
        eval_steps: int = 0,
        sample_seed: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if not 1 <= latent_dim <= ambient_dim:
            raise ConfigError(f"LatentDiT: latent_dim must lie in [1, ambient_dim={ambient_dim}], "
                              f"got latent_dim={latent_dim}")
        if lr <= 0 or encoder_lr <= 0:
            raise ConfigError(f"LatentDiT: lr and encoder_lr must be > 0, got lr={lr}, encoder_lr={encoder_lr}")
        if layout not in LAYOUTS:
            raise ConfigError(f"LatentDiT: layout must be one of {LAYOUTS}, got {layout!r}")
        if eval_samples < 2 or eval_steps < 0:
            raise ConfigError(f"LatentDiT: eval_samples must be >= 2 and eval_steps >= 0 (0: DDPM), "
                              f"got eval_samples={eval_samples}, eval_steps={eval_steps}")
        side = math.isqrt(latent_dim)
        if layout == "grid" and side * side != latent_dim:
            raise ConfigError(f"LatentDiT: layout 'grid' needs a square latent_dim, got {latent_dim} "
                              f"(use layout: token)")
        self.save_hyperparameters()
        self.encoder = nn.Linear(ambient_dim, latent_dim, bias=False)
        nn.init.orthogonal_(self.encoder.weight)  # W^T W = I at the start
        if layout == "grid":
            self._latent_shape = (1, side, side)
        else:
            self._latent_shape = (latent_dim, 1, 1)
        channels, input_size, _ = self._latent_shape
        self.net = dit(size, patch_size=1, input_size=input_size, in_channels=channels, num_classes=0,
                       conditioning=conditioning)
        if compile:
            self.net.compile()
        self.diffusion = GaussianDiffusion(num_steps, schedule, prediction="epsilon")

    # -- the score network -------------------------------------------------------------------
    @property
    def W(self) -> Tensor:
        """The decoder ``[D, d0]`` (the encoder is its transpose)."""
        return self.encoder.weight.T

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``eps_theta(x_t, t) = (x_t - W f(W^T x_t, t)) / sqrt(1 - abar_t)``: ``[B, D], [B] -> [B, D]``."""
        self.check_shape("x", x, (None, self.hparams.ambient_dim),
                         " (set model.init_args.ambient_dim to match the data)")
        z = self.encoder(x).reshape(len(x), *self._latent_shape)
        f = self.net(z, t).reshape(len(x), -1)
        if self.hparams.skip:
            abar = self.diffusion.alphas_cumprod[t.to(self.diffusion.betas.device)]
            f = f + abar.to(device=x.device, dtype=x.dtype)[:, None] * z.reshape(len(x), -1)
        decoded = f @ self.encoder.weight
        b = self.diffusion.one_minus_alphas_cumprod.sqrt()[t.to(self.diffusion.betas.device)]
        return (x - decoded) / b.to(device=x.device, dtype=x.dtype)[:, None]

    # -- training and evaluation -------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        loss = self.diffusion.training_loss(self, x)
        self.log_train(batch_idx, loss=loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch, batch_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch, batch_idx)

    def _data(self):
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def _evaluate(self, split: str, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        generator = torch.Generator(device=x.device).manual_seed(batch_idx)
        t = torch.randint(0, self.diffusion.num_steps, (len(x),), generator=generator, device=x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_t = self.diffusion.q_sample(x, t, noise)
        eps = self(x_t, t)  # one forward for the loss and the score error
        loss = ((eps - self.diffusion.target(x, t, noise)) ** 2).mean()  # the training loss at these t and noise
        self.log(f"{split}/loss", loss, prog_bar=split == "val", sync_dist=True)
        data = self._data()
        if data is not None and hasattr(data, "true_eps"):
            self.log(f"{split}/score_error", self.score_error(data, x_t, t, eps).float(), sync_dist=True)

    def score_error(self, data, x_t: Tensor, t: Tensor, eps: Tensor | None = None) -> Tensor:
        """Mean over elements of ``(eps_theta(x_t, t) - eps*(x_t, t))^2`` in float64, ``eps*`` from
        ``data.true_eps`` (``SubspaceDataModule``); pass ``eps`` when the forward is already done."""
        eps = self(x_t, t) if eps is None else eps
        table, rows = self.diffusion, t.to(self.diffusion.betas.device)
        true = data.true_eps(x_t.double(), table.alphas_cumprod[rows].to(x_t.device),
                             table.one_minus_alphas_cumprod[rows].to(x_t.device))
        return ((eps.double() - true) ** 2).mean()

    def on_validation_epoch_end(self) -> None:
        self._log_subspace_error("val")

    def on_test_epoch_end(self) -> None:
        self._log_subspace_error("test")
        data = self._data()
        if data is None or not hasattr(data, "test_set"):
            return
        real = data.test_set.tensors[0]
        generator = torch.Generator(device=self.device).manual_seed(self.hparams.sample_seed)
        dry = self.trainer.fast_dev_run  # a dry run checks the path only: 16 samples, 10 DDIM steps
        fake = self.sample(16 if dry else self.hparams.eval_samples, steps=10 if dry else None, generator=generator).cpu()
        self.log("test/mmd", mmd(fake, real).float(), sync_dist=True)
        count = min(len(fake), len(real))
        directions = torch.Generator().manual_seed(self.hparams.sample_seed)
        self.log("test/sliced_w2", sliced_wasserstein(fake[:count], real[:count], generator=directions).float(),
                 sync_dist=True)
        if hasattr(data, "basis") and not getattr(data, "mixture", 0):
            basis = data.basis_float64
            w2 = gaussian_w2(fake, torch.zeros(len(basis), dtype=torch.float64), basis @ basis.T)
            self.log("test/w2", w2.float(), sync_dist=True)

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, generator: torch.Generator | None = None,
               progress: bool = False) -> Tensor:
        """``n`` samples ``[n, D]`` in eval mode: DDPM ancestral for ``steps = 0``, else DDIM (eta 0)
        over ``steps`` respaced steps; ``steps`` defaults to ``eval_steps``.

        DDPM is the default because deterministic DDIM integrates the model's error: in this score
        form ``x0^ = (x_t - sqrt(1 - abar) eps^) / sqrt(abar)`` multiplies an error of ``eps^`` by
        ``1 / sqrt(abar_t)`` (~150 at t = T), and a systematic error there moves every sample.
        """
        steps = self.hparams.eval_steps if steps is None else steps
        if steps < 0:
            raise ConfigError(f"steps must be >= 0 (0: DDPM), got {steps}")
        shape = (n, self.hparams.ambient_dim)
        training = self.training
        self.eval()
        try:
            if steps == 0:
                return self.diffusion.ddpm_sample(self, shape, generator=generator, progress=progress)
            return self.diffusion.ddim_sample(self, shape, steps, generator=generator, progress=progress)
        finally:
            self.train(training)

    def _log_subspace_error(self, split: str) -> None:
        data = self._data()
        if data is not None and hasattr(data, "basis"):
            self.log(f"{split}/subspace_error", self.subspace_error(data.basis), sync_dist=True)

    def subspace_error(self, basis: Tensor) -> Tensor:
        """``||P_W - B B^T||_F^2`` for a basis ``B [D, d0]`` with orthonormal columns."""
        h = self.hparams
        if tuple(basis.shape) != (h.ambient_dim, h.latent_dim):
            raise ShapeError(f"LatentDiT: the data's basis has shape {list(basis.shape)}, the model expects "
                             f"[{h.ambient_dim}, {h.latent_dim}] (ambient_dim, latent_dim)")
        q, _ = torch.linalg.qr(self.W.detach().double())
        b = basis.to(device=q.device, dtype=torch.float64)
        return ((q @ q.T - b @ b.T) ** 2).sum().float()

    def parameter_groups(self):
        """The DiT at ``lr`` / ``weight_decay``, ``W`` at ``encoder_lr`` without decay (one cosine schedule)."""
        return [{"params": self.net.parameters()},
                {"params": self.encoder.parameters(), "lr": self.hparams.encoder_lr, "weight_decay": 0.0}]

    def configure_optimizers(self):
        """``ZooModule``'s AdamW and cosine schedule on :meth:`parameter_groups`, fused on CUDA."""
        return adamw_cosine(self)
