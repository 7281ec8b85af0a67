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



class SignalAt(Callback):
    """A scheduler's preemption (``SIGTERM``) or a Ctrl-C (``SIGINT``) sent to this process right
    after training step ``step``."""

    def __init__(self, step: int, name: str = "SIGTERM") -> None:
        self.step, self.signal = step, getattr(signal, name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)


class KillDuringSave(Callback):
    """SIGKILL in the middle of writing checkpoint number ``save`` (counted from 1): half its bytes
    are on disk when the process dies, as when a node is lost during a save."""

    def __init__(self, save: int) -> None:
        self.save = save

    def setup(self, trainer, pl_module, stage) -> None:
        import io

        import torch

        original, calls = torch.save, [0]

        def save(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and "state_dict" in obj and hasattr(f, "write"):
                calls[0] += 1
                if calls[0] == self.save:
                    buffer = io.BytesIO()
                    original(obj, buffer, *args, **kwargs)
                    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                    os.kill(os.getpid(), signal.SIGKILL)
            return original(obj, f, *args, **kwargs)

        torch.save = save
