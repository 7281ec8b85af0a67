"""CIFAR-10 and CIFAR-100 from the "python version" pickle batches in ``data_dir``."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data_modules.image import ImageDataModule, as_images
from zoo.core.errors import ConfigError, MalformedDataError

# The CIFAR pickles hold dicts, lists, bytes and numpy arrays; nothing else may be unpickled.
# (``_codecs.encode`` is how protocol-2 pickles written by Python 3 store bytes.)
_ARRAY_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold only arrays")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> dict[str, object]:
    """One CIFAR pickle batch as a dict with ``str`` keys, unpickled without running foreign code."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise MalformedDataError(f"{path}: not a CIFAR pickle batch ({err})") from err
    if not isinstance(batch, dict):
        raise MalformedDataError(f"{path}: expected a dict, got {type(batch).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


class CIFARDataModule(ImageDataModule):
    """CIFAR-10 (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``) or CIFAR-100
    (``cifar-100-python/train``, ``test``); the folder may also be ``data_dir`` itself.

    Args:
        num_classes: 10 or 100 (selects the file layout).
        coarse: CIFAR-100 only, use the 20 superclass labels instead of the 100 fine ones.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        normalize: bool = True,
        num_classes: int = 10,
        coarse: bool = False,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, seed, val_fraction, 0.0, normalize)
        if num_classes not in (10, 100):
            raise ConfigError(f"CIFARDataModule num_classes must be 10 or 100, got {num_classes}")
        if coarse and num_classes != 100:
            raise ConfigError("CIFARDataModule coarse=True needs num_classes=100")
        self.num_classes = 20 if coarse else num_classes
        self.variant = num_classes
        self.coarse = coarse

    def _read(self, names: list[str]) -> tuple[Tensor, Tensor]:
        folder = "cifar-10-batches-py/" if self.variant == 10 else "cifar-100-python/"
        key = "labels" if self.variant == 10 else ("coarse_labels" if self.coarse else "fine_labels")
        images, labels = [], []
        for name in names:
            path = self.find_file(folder + name, name)
            batch = read_cifar_batch(path)
            if "data" not in batch or key not in batch:
                raise MalformedDataError(f"{path}: expected keys 'data' and {key!r}, found {sorted(batch)}")
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch[key]) != len(data):
                raise MalformedDataError(
                    f"{path}: expected data [N, 3072] with N labels, got {data.shape} and {len(batch[key])} labels"
                )
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[key], dtype=np.int64))
        y = torch.as_tensor(np.concatenate(labels))
        if int(y.max()) >= self.num_classes or int(y.min()) < 0:
            raise MalformedDataError(f"CIFAR labels: expected 0..{self.num_classes - 1}, found {int(y.min())}..{int(y.max())}")
        return as_images(np.concatenate(images)), y

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.variant == 10:
            train, test = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        else:
            train, test = ["train"], ["test"]
        return *self._read(train), *self._read(test)
