"""Callbacks the CLI adds to every run: exact-resume RNG state, training curves as a PNG, and a
progress bar that does not slow small models down."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar


class RNGState(Callback):
    """Stores the torch, CUDA, numpy and Python RNG states in every checkpoint and restores them
    on resume, so dropout and augmentation draw the same numbers as an uninterrupted run.

    The states are tensors, ints and tuples only: the checkpoint still loads with
    ``weights_only=True``. Under DDP the checkpoint holds rank 0's states (all ranks start from
    the same seed).
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state_dict["python"])


class Curves(Callback):
    """Plots every epoch-level ``train/*`` and ``val/*`` metric against the epoch into
    ``<log_dir>/curves.png`` when fitting ends; metrics sharing a name (``train/loss``,
    ``val/loss``) share a panel. The history is kept in checkpoints, so a resumed run plots all
    of it.
    """

    def __init__(self, filename: str = "curves.png") -> None:
        self.filename = filename
        self.history: dict[str, list[tuple[int, float]]] = {}

    def _record(self, trainer: Trainer, prefix: str) -> None:
        metrics = trainer.callback_metrics
        for key, value in metrics.items():
            step_level = key.endswith("_step") or f"{key}_epoch" in metrics
            if key.startswith(prefix) and not step_level and value.numel() == 1:
                self.history.setdefault(key.removesuffix("_epoch"), []).append((trainer.current_epoch, float(value)))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer, "train/")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, "val/")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if trainer.is_global_zero and self.history and log_dir and not trainer.fast_dev_run:
            self.plot(Path(log_dir) / self.filename)

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels: dict[str, list[str]] = {}
        for key in sorted(self.history):
            panels.setdefault(key.split("/", 1)[1], []).append(key)
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
        for ax, (metric, keys) in zip(axes[0], panels.items()):
            for key in keys:
                epochs, values = zip(*self.history[key])
                ax.plot(epochs, values, marker="o", markersize=3, label=key.split("/")[0])
            ax.set(title=metric, xlabel="epoch")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: [tuple(p) for p in v] for k, v in state_dict["history"].items()}


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, redrawn at most every ``min_interval`` seconds (and at the
    end of each loop) rather than after every batch: a redraw with its metrics costs about 1 ms
    on a CPU, as much as a small model's whole training step."""

    def __init__(self, min_interval: float = 0.2, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=1, process_position=process_position, leave=leave)
        self.min_interval = min_interval
        self._last_draw = 0.0

    def _should_update(self, current: int, total: int) -> bool:
        now = time.monotonic()
        if self.is_enabled and (current == total or now - self._last_draw >= self.min_interval):
            self._last_draw = now
            return True
        return False
