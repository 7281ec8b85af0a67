"""scikit-learn's bundled handwritten digits: 1,797 grey 8x8 images, 10 classes, no download."""

from __future__ import annotations

import torch
from torch import Tensor

from data_modules.image import ImageDataModule


class DigitsDataModule(ImageDataModule):
    """``sklearn.datasets.load_digits`` as ``[N, 1, 8, 8]`` images; the zoo's offline default.

    The set has no official test split: ``val_fraction`` and ``test_fraction`` of it are held out
    by a seeded permutation. ``data_dir`` is not used (the data ships inside scikit-learn).
    """

    num_classes = 10

    def load(self) -> tuple[Tensor, Tensor, None, None]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        return images, torch.as_tensor(digits.target, dtype=torch.long), None, None
