"""What every zoo DataModule shares: in-memory datasets fetched a batch at a time, seeded splits,
and a training sampler that makes a mid-epoch checkpoint resume exactly where it stopped.

A subclass only fills ``self.train_set``, ``self.val_set``, ``self.test_set`` (and optionally
``self.predict_set``) in ``setup``; this base turns them into DataLoaders.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from zoo.core.errors import ConfigError, MissingDataError


class TensorSet(Dataset):
    """Tensors that share their first dimension, indexed a whole batch at once.

    ``DataLoader`` calls ``__getitems__`` with the batch's indices, so a batch costs one
    advanced-indexing call per tensor instead of ``batch_size`` calls and a collate.
    """

    def __init__(self, *tensors: Tensor) -> None:
        if not tensors:
            raise ValueError("TensorSet needs at least one tensor")
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError(f"TensorSet tensors must share their first dimension, got {[len(t) for t in tensors]}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[index] for t in self.tensors)


def keep_batch(batch: Any) -> Any:
    """Collate function for datasets whose ``__getitems__`` already returns a batch."""
    return batch


def seeded_split(n: int, fractions: Sequence[float], seed: int) -> list[Tensor]:
    """Split ``range(n)`` into ``len(fractions) + 1`` disjoint index sets by a seeded permutation.

    ``fractions`` are the sizes of all parts but the first, which takes the rest; e.g.
    ``seeded_split(100, [0.1, 0.2], 0)`` gives 70 / 10 / 20 indices.
    """
    if any(f < 0 for f in fractions) or sum(fractions) >= 1:
        raise ConfigError(f"split fractions must be >= 0 and sum to < 1, got {list(fractions)}")
    sizes = [round(f * n) for f in fractions]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, end = [], n
    for size in reversed(sizes):
        parts.append(perm[end - size : end])
        end -= size
    return [perm[:end], *reversed(parts)]


class EpochSampler(DistributedSampler):
    """Shuffles with the seed ``seed + epoch``, shards over ranks, and can start mid-epoch.

    Being a ``DistributedSampler``, Lightning neither replaces nor wraps it under DDP. ``skip``
    drops the first batches of one epoch (set when resuming); ``len`` stays the full epoch, as
    Lightning's loop counts the skipped batches itself.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class ZooDataModule(LightningDataModule):
    """Base DataModule: loaders over in-memory sets, an exactly resumable training order.

    Args:
        data_dir: folder with the data files (unused by embedded and synthetic data).
        batch_size: samples per batch for every split.
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: seed for the splits and for the per-epoch shuffle of the training set.
    """

    train_set: Dataset
    val_set: Dataset
    test_set: Dataset

    def __init__(self, data_dir: str | None = None, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._sampler: EpochSampler | None = None
        self._resume: dict[str, int] | None = None

    # -- files -------------------------------------------------------------------------------
    def find_file(self, *names: str) -> Path:
        """The first of ``names`` (relative paths) that exists under ``data_dir``."""
        if self.data_dir is None:
            raise ConfigError(f"{type(self).__name__} needs data_dir: a folder holding {names[0]}")
        for name in names:
            if (self.data_dir / name).is_file():
                return self.data_dir / name
        raise MissingDataError(
            f"{type(self).__name__}: no {' or '.join(names)} under data_dir={str(self.data_dir)!r}"
        )

    # -- loaders -----------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, sampler: Any = None) -> DataLoader:
        """A DataLoader with its own generator: creating an iterator draws the workers' base seed
        from it, not from the global RNG, so loading data never shifts the model's random stream
        (dropout draws the same numbers with or without a resume or an extra validation pass)."""
        batched = hasattr(dataset, "__getitems__")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=keep_batch if batched else None,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        self._sampler = EpochSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        if self._resume is not None:
            self._sampler.set_epoch(self._resume["epoch"])
            self._sampler.skip = self._resume["batches"] * self.batch_size
            self._resume = None
        return self._loader(self.train_set, self._sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(getattr(self, "predict_set", self.test_set))

    # -- exact resume ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Where the training order stands: the epoch and the batches the loop has trained on."""
        trainer = self.trainer
        if trainer is None or self._sampler is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        epoch = trainer.current_epoch
        if done >= trainer.num_training_batches:  # the epoch is over: resume at the next one
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches": done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict:
            self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
