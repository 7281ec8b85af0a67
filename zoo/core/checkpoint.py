"""Checkpoints that are never lost, never stale and never hold a diverged model.

- :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the destination folder,
  fsyncs it and renames it over the target (``os.replace``): a crash, a SIGKILL or a full disk
  during a save leaves the previous file intact, never a partial file under a checkpoint name.
  (Lightning's own writer stages the file in ``$TMPDIR`` and moves it; across filesystems that
  move is a copy, and a kill during it leaves a truncated file.)
- :class:`ZooCheckpoint` is Lightning's ``ModelCheckpoint`` with ``last.ckpt`` that is the last
  state: rewritten at the end of every training epoch and at the end of fit (Lightning 2.6 rewrites
  it only when a top-k checkpoint is saved), saved on SIGTERM/SIGINT so a preempted run resumes
  where it stopped, and a monitored value that is NaN or infinite never makes a checkpoint "best".
- :class:`FiniteLoss` stops training at the first non-finite loss, naming the step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from zoo.core.errors import CheckpointError, NonFiniteError


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.<name>.tmp-<pid>`` beside the target, fsync, ``os.replace``, fsync the folder."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as err:
            temporary.unlink(missing_ok=True)
            raise CheckpointError(f"cannot write checkpoint {path}: {err.strerror or err}") from err
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


class ZooCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the last state (module docstring)."""

    _last_written_step = -1  # the global step whose state last.ckpt holds (-1: not written by this run)

    def _write_last(self, trainer: Trainer) -> None:
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return
        if self._last_written_step == trainer.global_step and self.last_model_path:
            return
        path = self.last_model_path or str(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")
        self.last_model_path = path  # set first: it is part of the saved state
        trainer.save_checkpoint(path, self.save_weights_only)
        self._last_written_step = trainer.global_step

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._write_last(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._write_last(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A scheduler's SIGTERM or a Ctrl-C: save where training stands, to resume with ``--ckpt_path last``."""
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)) and trainer.state.fn == TrainerFn.FITTING:
            self._last_written_step = -1
            self._write_last(trainer)
            rank_zero_info(f"{type(exception).__name__}: saved the state at step {trainer.global_step} to "
                           f"{self.last_model_path}; resume with --ckpt_path last")

    def check_monitor_top_k(self, trainer: Trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and not torch.isfinite(current).all():
            return False
        return super().check_monitor_top_k(trainer, current)


class FiniteLoss(Callback):
    """Stops at the first NaN or infinite training loss with a :class:`NonFiniteError` that names
    the step (one check per step; it synchronizes with the device)."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            raise NonFiniteError(
                f"training loss is {loss.detach().float().cpu().flatten()[0].item()} at step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}, batch {batch_idx}): training stopped, no checkpoint of this state "
                "was saved; lower the learning rate or check the data for NaN/inf values"
            )
