"""Memory sets for associative-memory retrieval: M images as flat vectors in [0, 1], and
corrupted queries for each of them (Hopfield retrieval experiments).

Queries follow the modern-Hopfield retrieval benchmarks:

- masked: each pixel dropped with probability 0.5, the survivors doubled (``dropout(0.5)``);
- noisy: ``clamp(|xi + N(0, sigma^2)|, 0, 1)``.

Splits: ``train`` holds the memories themselves (Stage I of U-Hop+ fits a feature map on them,
a mini-batch of memories at a time); ``val`` and ``test`` hold ``(memory, masked, noisy)``
triples (the true memory and its two corruptions), ``queries_per_memory`` per memory, drawn
from separate generators so validation never sees the test corruptions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from data_modules.base import TensorSet, ZooDataModule
from data_modules.cifar import CIFARDataModule
from data_modules.digits import DigitsDataModule
from data_modules.image import ImageDataModule
from data_modules.mnist import MNISTDataModule
from zoo.core.errors import ConfigError

SOURCES = ("digits", "mnist", "cifar10", "cifar100")


def image_source(source: str, data_dir: str | None) -> ImageDataModule:
    """The unnormalized image DataModule behind a memory-set name (``SOURCES``)."""
    if source == "digits":
        return DigitsDataModule(data_dir, normalize=False)
    if source == "mnist":
        return MNISTDataModule(data_dir, normalize=False)
    if source in ("cifar10", "cifar100"):
        return CIFARDataModule(data_dir, normalize=False, num_classes=int(source[5:]))
    raise ConfigError(f"memory source must be one of {SOURCES}, got {source!r}")


def mask_queries(memories: Tensor, generator: torch.Generator, drop: float = 0.5) -> Tensor:
    """Drop each pixel with probability ``drop`` and scale the survivors by ``1 / (1 - drop)``."""
    keep = torch.rand(memories.shape, generator=generator) >= drop
    return memories * keep / (1 - drop)


def noisy_queries(memories: Tensor, generator: torch.Generator, sigma: float) -> Tensor:
    """``clamp(|xi + N(0, sigma^2)|, 0, 1)``."""
    noise = torch.randn(memories.shape, generator=generator) * sigma
    return (memories + noise).abs().clamp(0, 1)


class MemoryDataModule(ZooDataModule):
    """``num_memories`` images of ``source`` (a seeded choice from its training files), flattened.

    Args:
        source: ``digits`` (scikit-learn's, the offline default), ``mnist`` or ``cifar10`` /
            ``cifar100`` (files under ``data_dir``, as their own DataModules read them).
        num_memories: M, the number of stored patterns.
        noise_std: sigma of the noisy queries.
        queries_per_memory: corrupted copies of each memory in the validation and test sets.
        batch_size: memories per Stage-I step (the paper's 16) and queries per evaluation batch.
    """

    def __init__(
        self,
        source: str = "digits",
        data_dir: str | None = None,
        num_memories: int = 100,
        noise_std: float = 0.5,
        queries_per_memory: int = 1,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, seed)
        if source not in SOURCES:
            raise ConfigError(f"memory source must be one of {SOURCES}, got {source!r}")
        if num_memories < 2:
            raise ConfigError(f"num_memories must be >= 2 (a memory set needs pairs), got {num_memories}")
        if noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {noise_std}")
        if queries_per_memory < 1:
            raise ConfigError(f"queries_per_memory must be >= 1, got {queries_per_memory}")
        self.source = source
        self.num_memories = num_memories
        self.noise_std = noise_std
        self.queries_per_memory = queries_per_memory
        self.memories: Tensor | None = None
        self.image_shape: tuple[int, ...] | None = None

    def load_memories(self) -> Tensor:
        """The memory set ``[M, d]``: a seeded choice of ``num_memories`` training images."""
        images = image_source(self.source, None if self.data_dir is None else str(self.data_dir)).load()[0]
        self.image_shape = tuple(images.shape[1:])
        if self.num_memories > len(images):
            raise ConfigError(
                f"num_memories={self.num_memories} exceeds the {len(images)} training images of {self.source!r}"
            )
        choice = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
        return images[choice[: self.num_memories]].flatten(1).contiguous()

    def queries(self, split: int) -> TensorSet:
        """``(memory, masked, noisy)`` for every memory, ``queries_per_memory`` times, from the
        generator of split ``split`` (1 = validation, 2 = test)."""
        generator = torch.Generator().manual_seed(self.seed * 3 + split)
        targets = self.memories.repeat(self.queries_per_memory, 1)
        return TensorSet(targets, mask_queries(targets, generator), noisy_queries(targets, generator, self.noise_std))

    def setup(self, stage: str | None = None) -> None:
        if self.memories is not None:
            return
        self.memories = self.load_memories()
        self.train_set = TensorSet(self.memories)
        self.val_set = self.queries(1)
        self.test_set = self.queries(2)
