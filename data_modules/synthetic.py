"""Base for data drawn from a seeded generator (memory sets, function classes, latent Gaussians)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from data_modules.base import TensorSet, ZooDataModule
from zoo.core.errors import ConfigError

SPLITS = ("train", "val", "test")


class SyntheticDataModule(ZooDataModule, ABC):
    """Draws each split from ``generate(n, generator)`` with its own generator.

    The generator of split ``k`` is seeded with ``seed * len(SPLITS) + k``: every split is
    reproducible from ``seed`` alone, splits never share draws, and changing ``num_train`` leaves
    the validation and test sets unchanged.
    """

    def __init__(
        self,
        num_train: int = 1024,
        num_val: int = 256,
        num_test: int = 256,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(None, batch_size, num_workers, seed)
        for name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if n < 1:
                raise ConfigError(f"{name} must be >= 1, got {n}")
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}

    @abstractmethod
    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Draw ``n`` samples as tensors sharing their first dimension, using only ``generator``."""

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        for k, split in enumerate(SPLITS):
            generator = torch.Generator().manual_seed(self.seed * len(SPLITS) + k)
            setattr(self, f"{split}_set", TensorSet(*self.generate(self.sizes[split], generator)))
