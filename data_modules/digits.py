"""scikit-learn's bundled handwritten digits: 1,797 grey 8x8 images, 10 classes, no download."""

from __future__ import annotations

import torch
from torch import Tensor

from data_modules.image import ImageDataModule


class DigitsDataModule(ImageDataModule):
    """``sklearn.datasets.load_digits`` as ``[N, 1, 8, 8]`` images; the zoo's offline default.

    The set has no official test split: ``val_fraction`` and ``test_fraction`` of it are held out
    by a seeded permutation. ``data_dir`` is not used (the data ships inside scikit-learn).
    ``mirror=True`` flips every image left to right (a shifted distribution with the same labels and
    pixel statistics, for fine-tuning a model trained on the plain digits).
    """

    num_classes = 10

    def __init__(self, data_dir: str | None = None, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.2, normalize: bool = True,
                 mirror: bool = False) -> None:
        super().__init__(data_dir, batch_size, num_workers, seed, val_fraction, test_fraction, normalize)
        self.mirror = mirror

    def load(self) -> tuple[Tensor, Tensor, None, None]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        if self.mirror:
            images = images.flip(-1)
        return images, torch.as_tensor(digits.target, dtype=torch.long), None, None
