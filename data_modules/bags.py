"""Multiple-instance learning on digit bags (as MNIST-bags, Ilse et al. 2018, on scikit-learn's
8x8 digits): a bag is a set of digit images, labelled 1 when it contains at least one ``target``.

Bags draw their instances only from one split of the digits (train bags from the training
images, validation and test bags from held-out images), so no image is shared across splits.
Bag sizes vary: ``round(N(bag_size, bag_size_std))``, at least 2. Batches are
``(instances [B, N, 64], padding [B, N], label [B])`` with ``N`` the largest bag of the split and
``padding`` True at the empty slots.
"""

from __future__ import annotations

import torch
from torch import Tensor

from data_modules.base import TensorSet, ZooDataModule
from data_modules.digits import DigitsDataModule
from zoo.core.errors import ConfigError


def make_bags(images: Tensor, labels: Tensor, count: int, target: int, size: float, size_std: float,
              generator: torch.Generator) -> TensorSet:
    """``count`` bags of flattened ``images`` with their padding masks and bag labels."""
    sizes = (torch.randn(count, generator=generator) * size_std + size).round().clamp(min=2).long()
    longest = int(sizes.max())
    instances = torch.zeros(count, longest, images[0].numel())
    padding = torch.ones(count, longest, dtype=torch.bool)
    bag_labels = torch.zeros(count)
    flat = images.flatten(1)
    for b, n in enumerate(sizes.tolist()):
        chosen = torch.randint(len(images), (n,), generator=generator)
        instances[b, :n] = flat[chosen]
        padding[b, :n] = False
        bag_labels[b] = float((labels[chosen] == target).any())
    return TensorSet(instances, padding, bag_labels)


class DigitBagsDataModule(ZooDataModule):
    """Bags of 8x8 digits labelled by whether they contain ``target``.

    Args:
        target: the digit (0-9) whose presence makes a bag positive.
        bag_size: mean bag size (with the default 10 and target frequency ~1/10, about 65 % of
            the bags are positive).
        bag_size_std: standard deviation of the bag size.
        num_train, num_val, num_test: bags per split.
    """

    def __init__(
        self,
        target: int = 9,
        bag_size: float = 10.0,
        bag_size_std: float = 2.0,
        num_train: int = 500,
        num_val: int = 100,
        num_test: int = 300,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(None, batch_size, num_workers, seed)
        if not 0 <= target <= 9:
            raise ConfigError(f"target must be a digit 0-9, got {target}")
        if bag_size < 2 or bag_size_std < 0:
            raise ConfigError(f"bag_size must be >= 2 and bag_size_std >= 0, got {bag_size} and {bag_size_std}")
        for name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if n < 1:
                raise ConfigError(f"{name} must be >= 1, got {n}")
        self.target = target
        self.bag_size = bag_size
        self.bag_size_std = bag_size_std
        self.counts = {"train": num_train, "val": num_val, "test": num_test}

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        digits = DigitsDataModule(seed=self.seed, normalize=False)
        digits.setup()
        for k, split in enumerate(("train", "val", "test")):
            images, labels = getattr(digits, f"{split}_set").tensors
            generator = torch.Generator().manual_seed(self.seed * 3 + k)
            bags = make_bags(images, labels, self.counts[split], self.target, self.bag_size, self.bag_size_std, generator)
            setattr(self, f"{split}_set", bags)
