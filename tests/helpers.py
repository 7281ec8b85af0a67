"""Callbacks the tests inject through the CLI (``trainer.callbacks`` in a YAML fragment)."""

from __future__ import annotations

import os
import signal

from lightning.pytorch import Callback


class KillAt(Callback):
    """Simulates a crash: SIGKILL (no cleanup, no final checkpoint) right after training step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RaiseAt(Callback):
    """Raises after training step ``step`` (an in-process crash: Lightning tears down, saves nothing)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash after step {self.step}")

