"""Shared base for image classification data: seeded train/val(/test) split, per-channel scaling."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

from data_modules.base import TensorSet, ZooDataModule, seeded_split


class ImageDataModule(ZooDataModule, ABC):
    """Images as float32 ``[N, C, H, W]``, labels as int64; subclasses implement ``load``.

    Args:
        val_fraction: part of the training files held out for validation (seeded).
        test_fraction: part held out for testing, used only when the format has no test split.
        normalize: standardize each channel with the mean and std of the training split only.
    """

    num_classes: int

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        normalize: bool = True,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, seed)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.normalize = normalize
        self.mean: Tensor | None = None
        self.std: Tensor | None = None

    @abstractmethod
    def load(self) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Return ``(train_images, train_labels, test_images, test_labels)`` with images as float in
        [0, 1], shape ``[N, C, H, W]``; the test pair is ``None`` when the format has no test split."""

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        x, y, test_x, test_y = self.load()
        if test_x is None:
            train, val, test = seeded_split(len(x), [self.val_fraction, self.test_fraction], self.seed)
            test_x, test_y = x[test], y[test]
        else:
            train, val = seeded_split(len(x), [self.val_fraction], self.seed)
        train_x, val_x = x[train], x[val]
        if self.normalize:
            self.mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
            self.std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
            train_x, val_x, test_x = ((t - self.mean) / self.std for t in (train_x, val_x, test_x))
        self.train_set = TensorSet(train_x.contiguous(), y[train])
        self.val_set = TensorSet(val_x.contiguous(), y[val])
        self.test_set = TensorSet(test_x.contiguous(), test_y)


def as_images(array, channels_last: bool = False) -> Tensor:
    """uint8 array ``[N, H, W]`` or ``[N, H, W, C]`` / ``[N, C, H, W]`` -> float32 [N, C, H, W] in [0, 1]."""
    x = torch.from_numpy(np.array(array, dtype=np.uint8))  # a copy: IDX arrays are read-only buffers
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif channels_last:
        x = x.permute(0, 3, 1, 2)
    return x.float().div_(255.0)
