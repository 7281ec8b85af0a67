"""What every zoo LightningModule shares: cheap training-step logging, parameter counts in the
logs, one-line shape errors, and the default optimizer (AdamW under a per-step cosine schedule)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from zoo.core.errors import ShapeError


class ZooModule(LightningModule):
    """A LightningModule that records its parameter counts with every run. Subclasses that save
    ``lr`` and ``weight_decay`` hyperparameters get AdamW with a cosine decay to 0 over the run."""

    def __init__(self) -> None:
        super().__init__()
        self._window: dict[str, list] = {}
        self._epoch: dict[str, list] = {}

    def log_train(self, batch_idx: int, **values: Tensor) -> None:
        """Log training-step scalars as ``train/<name>`` at a fraction of ``self.log``'s cost.

        ``self.log`` costs about 1 ms per call on a CPU, as much as a small model's whole step.
        Here each step only adds the value to two running sums; ``self.log`` is called every
        ``trainer.log_every_n_steps`` steps with the mean over those steps (what the logger
        writes and the progress bar shows), and once at the epoch's last batch with the epoch
        mean as ``train/<name>_epoch``.
        """
        for name, value in values.items():
            value = value.detach()
            for store in (self._window, self._epoch):
                total = store.setdefault(name, [0.0, 0])
                total[0] = total[0] + value
                total[1] += 1
        trainer = self.trainer
        if trainer.fast_dev_run or (self.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0:
            for name, (total, count) in self._window.items():
                self.log(f"train/{name}", total / count, prog_bar=True)
            self._window.clear()
        if batch_idx + 1 >= trainer.num_training_batches:
            for name, (total, count) in self._epoch.items():
                self.log(f"train/{name}_epoch", total / count, on_step=False, on_epoch=True, sync_dist=True)
            self._epoch.clear()

    def parameter_counts(self) -> dict[str, int]:
        return {
            "params/total": sum(p.numel() for p in self.parameters()),
            "params/trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
        }

    def on_fit_start(self) -> None:
        counts = self.parameter_counts()
        for logger in self.loggers:
            logger.log_hyperparams(counts)

    def check_shape(self, name: str, tensor: Tensor, expected: Sequence[int | None], hint: str = "") -> None:
        """Raise ``ShapeError`` unless ``tensor.shape`` matches ``expected`` (``None`` = any size)."""
        shape = tuple(tensor.shape)
        if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
            want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
            raise ShapeError(f"{type(self).__name__}: {name} must have shape {want}, got {list(shape)}{hint}")

    def output_path(self, name: str, per_rank: bool = True) -> Path:
        """Where a file the module writes (``samples.png``, ``predictions.csv``) goes: the run's log
        dir, or ``trainer.default_root_dir`` when there is no logger (``fast_dev_run``), never the
        working directory. When several processes write (``per_rank``), each gets its own name
        (``samples_rank1.png``); a file only rank 0 writes keeps its name. Every rank must call it,
        before any early return (``trainer.log_dir`` is a collective under DDP)."""
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if per_rank and self.trainer.world_size > 1:
            stem, dot, ext = name.partition(".")
            name = f"{stem}_rank{self.global_rank}{dot}{ext}"
        return folder / name

    def parameter_groups(self):
        """What the default optimizer trains: all parameters, or AdamW parameter groups with their
        own ``lr`` / ``weight_decay`` (the hyperparameters are the defaults)."""
        return self.parameters()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay)
        steps = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
