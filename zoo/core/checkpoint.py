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
    """Stops at the first NaN or infinite training loss with a :class:`NonFiniteError` that names the step.

    On the CPU every step's loss is checked at once. On an accelerator, reading a check back makes the host wait for
    the device every step (a per-step sync that stalls the input pipeline), so there the check is copied to pinned
    host memory without blocking and read one step later, by when the device has long finished it; and read at once
    before any checkpoint is written, before validation, and at the end of each epoch and of training. So a
    non-finite step still stops the run (one step later at most) and no checkpoint of its state is ever written.
    ``deferred`` forces one behaviour (``None``: deferred on accelerators only)."""

    def __init__(self, deferred: bool | None = None) -> None:
        self.deferred = deferred
        self._pending: tuple | None = None  # (finite flag on the host, CUDA event or None, loss, step, epoch, batch)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        where = (loss.detach(), trainer.global_step, trainer.current_epoch, batch_idx)
        deferred = self.deferred if self.deferred is not None else loss.device.type != "cpu"
        if not deferred:
            if not torch.isfinite(loss).all():
                self._raise(*where)
            return
        self.flush()  # the previous step's check, long finished on the device
        finite = torch.isfinite(loss.detach()).all()
        event = None
        if finite.is_cuda:
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(finite, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            finite = host
        self._pending = (finite, event, *where)

    def flush(self) -> None:
        """Read the pending check (waiting for the device if it has not finished) and raise if it failed."""
        if self._pending is None:
            return
        finite, event, *where = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        if not bool(finite):
            self._raise(*where)

    @staticmethod
    def _raise(loss: torch.Tensor, step: int, epoch: int, batch_idx: int) -> None:
        raise NonFiniteError(
            f"training loss is {loss.float().cpu().flatten()[0].item()} at step {step} (epoch {epoch}, batch "
            f"{batch_idx}): training stopped, no checkpoint of this state was saved; lower the learning rate or "
            "check the data for NaN/inf values"
        )

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.flush()  # before the file is written

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.flush()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.flush()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.flush()
