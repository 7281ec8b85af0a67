"""In-context regression: a transformer trained on prompts of fresh functions learns to regress in
its forward pass (Garg et al. 2022), and can act as an optimizer of a deep model on the prompt's
examples (Wu, Su, Hu, Song, Liu, "Transformers are Deep Optimizers", ICML 2025: a ReLU-attention
transformer simulates gradient descent on an N-layer ReLU network; "ICL matches direct training").

Training minimizes the normalized squared error on every prefix of each prompt,

    L = (1/n) sum_{i<n} (f_theta(x_1, y_1, ..., x_{i-1}, y_{i-1}, x_i) - y_i)^2 / Var(y),

with ``Var(y)`` the task's target variance (``ICLTaskDataModule``), so predicting 0 scores 1.
Validation logs ``val/nmse`` (mean over positions) and ``val/nmse_last``; test logs, for the model
and each baseline of ``zoo.icl.baselines`` on the same prompts, the normalized error with ``k``
in-context examples, ``test/<model|zero|averaging|knn|least_squares>/nmse@k`` for ``k`` in
``report_at`` (and the last position), and ``test/nmse`` (the model, mean over positions).

:class:`Curriculum` (a Lightning callback, ``trainer.callbacks`` in YAML) grows the training
prompts' input dimension and number of examples every ``interval`` steps (Garg et al.'s
curriculum).
"""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from zoo.core.errors import ConfigError, ShapeError
from zoo.core.module import ZooModule
from zoo.icl.baselines import BASELINES
from zoo.icl.model import ICLTransformer


class InContextRegression(ZooModule):
    """A transformer regressing in context (module docstring).

    Args:
        n_dims: d, the input dimension the model reads.
        n_positions: the most examples a prompt may have.
        backbone: ``gpt2`` (interleaved ``x``/``y`` tokens, causal) or ``encoder`` (``[x, y]``
            tokens, the query's ``y`` zeroed, one pass per prefix).
        attention: ``softmax``, ``relu`` (``ReLU(QK^T)/N``) or ``linear``.
        width, depth, heads: the transformer's size.
        train_prefixes: encoder only: prefixes per training batch (a random subset, same for the
            batch); 0 = all (every pass costs ``n`` prompts' worth).
        knn_k: k of the k-NN baseline.
        report_at: numbers of in-context examples at which test logs errors.
        lr, weight_decay: AdamW under a cosine schedule.
    """

    def __init__(
        self,
        n_dims: int = 5,
        n_positions: int = 41,
        backbone: str = "gpt2",
        attention: str = "softmax",
        width: int = 64,
        depth: int = 3,
        heads: int = 2,
        train_prefixes: int = 0,
        knn_k: int = 3,
        report_at: tuple[int, ...] = (1, 5, 10, 20),
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("n_dims", n_dims), ("n_positions", n_positions), ("depth", depth), ("knn_k", knn_k)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if train_prefixes < 0:
            raise ConfigError(f"train_prefixes must be >= 0 (0 = all), got {train_prefixes}")
        self.save_hyperparameters()
        self.net = ICLTransformer(n_dims, n_positions, width, depth, heads, backbone, attention)
        self._test: dict[str, list[Tensor]] = {}

    def check_prompt(self, xs: Tensor, ys: Tensor) -> None:
        """One-line ``ShapeError`` for a prompt the model cannot read."""
        d, limit = self.hparams.n_dims, self.hparams.n_positions
        self.check_shape("xs", xs, (None, None, d), f" (the model's n_dims={d})")
        self.check_shape("ys", ys, (xs.shape[0], xs.shape[1]))
        if xs.shape[1] > limit:
            raise ShapeError(f"InContextRegression: prompt of {xs.shape[1]} examples exceeds the model's context "
                             f"n_positions={limit}")

    def forward(self, xs: Tensor, ys: Tensor, prompt_embeds: Tensor | None = None) -> Tensor:
        """Predictions ``[B, n]``: position ``i`` from the examples before it and ``x_i`` (and the
        leading vectors ``prompt_embeds [m, width]``, a soft prompt, if given: ``ICLTransformer``)."""
        self.check_prompt(xs, ys)
        return self.net(xs, ys, prompt_embeds=prompt_embeds)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        xs, ys, var = batch
        self.check_prompt(xs, ys)
        n = xs.shape[1]
        keep = self.hparams.train_prefixes
        if self.hparams.backbone == "encoder" and 0 < keep < n:
            prefixes = torch.randperm(n, device=xs.device)[:keep].sort().values
            pred, target = self.net(xs, ys, prefixes), ys[:, prefixes]
        else:
            pred, target = self.net(xs, ys), ys
        loss = ((pred - target) ** 2 / var[:, None]).mean()
        self.log_train(batch_idx, loss=loss)
        return loss

    def normalized_errors(self, xs: Tensor, ys: Tensor, var: Tensor) -> Tensor:
        """Per-prompt, per-position normalized squared errors ``[B, n]``."""
        return (self(xs, ys) - ys) ** 2 / var[:, None]

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        errors = self.normalized_errors(*batch)
        self.log("val/nmse", errors.mean(), prog_bar=True, batch_size=len(errors), sync_dist=True)
        self.log("val/nmse_last", errors[:, -1].mean(), batch_size=len(errors), sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        xs, ys, var = batch
        errors = {"model": self.normalized_errors(xs, ys, var)}
        for name, baseline in BASELINES.items():
            pred = baseline(xs, ys, self.hparams.knn_k) if name == "knn" else baseline(xs, ys)
            errors[name] = (pred - ys) ** 2 / var[:, None]
        for name, value in errors.items():
            self._test.setdefault(name, []).append(value.detach())

    def on_test_epoch_end(self) -> None:
        stored, self._test = self._test, {}
        if not stored:
            return
        model = torch.cat(stored["model"])
        n = model.shape[1]
        self.log("test/nmse", model.mean(), sync_dist=True)
        for name, chunks in stored.items():
            errors = torch.cat(chunks).mean(0)
            for k in sorted({k for k in self.hparams.report_at if k < n} | {n - 1}):
                self.log(f"test/{name}/nmse@{k}", errors[k], sync_dist=True)


class Curriculum(Callback):
    """Garg et al.'s curriculum: training prompts start with ``dims_start`` non-zero input
    coordinates and ``points_start`` examples, and every ``interval`` optimizer steps gain
    ``dims_step`` and ``points_step`` until they reach the DataModule's ``n_dims`` and
    ``n_points``. The stage is a function of ``trainer.global_step``, so a resumed run continues it.
    The DataModule needs ``set_curriculum(dims, points)`` (``ICLTaskDataModule``)."""

    def __init__(self, dims_start: int = 1, dims_step: int = 1, points_start: int = 5, points_step: int = 2,
                 interval: int = 200) -> None:
        if min(dims_start, points_start, interval) < 1 or min(dims_step, points_step) < 0:
            raise ConfigError(f"Curriculum needs starts and interval >= 1 and steps >= 0, got dims_start={dims_start}, "
                              f"points_start={points_start}, interval={interval}, dims_step={dims_step}, "
                              f"points_step={points_step}")
        self.dims_start, self.dims_step = dims_start, dims_step
        self.points_start, self.points_step, self.interval = points_start, points_step, interval

    def stage(self, step: int, n_dims: int, n_points: int) -> tuple[int, int]:
        """``(dims, points)`` of the training prompts at optimizer step ``step``."""
        k = step // self.interval
        return (min(self.dims_start + k * self.dims_step, n_dims),
                min(self.points_start + k * self.points_step, n_points))

    def _apply(self, trainer: Trainer) -> None:
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "set_curriculum"):
            raise ConfigError(f"Curriculum needs a DataModule with set_curriculum (ICLTaskDataModule), "
                              f"got {type(datamodule).__name__}")
        datamodule.set_curriculum(*self.stage(trainer.global_step, datamodule.n_dims, datamodule.n_points))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self._apply(trainer)
