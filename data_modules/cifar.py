"""CIFAR-10 and CIFAR-100 from the "python version" pickle batches in ``data_dir``."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data_modules.image import ImageDataModule, as_images
from zoo.core.errors import ConfigError, MalformedDataError

# The CIFAR pickles hold dicts, lists, bytes and numpy arrays; nothing else may be unpickled.
# (``_codecs.encode`` is how protocol-2 pickles written by Python 3 store bytes, ``bytes()`` how they
# store ``b""``: only the latin-1 form of the one and the argument-less form of the other are allowed,
# so a crafted pickle can reach no other codec and allocate nothing by a size it chooses.)
_ARRAY_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}

# Everything unpickling crafted or damaged bytes can raise with the globals above: truncation
# (EOFError), bad opcodes (UnpicklingError), absurd sizes (MemoryError, OverflowError), bad
# arguments to numpy's reconstructors (ValueError, TypeError, AttributeError), bad memo or
# stack references (KeyError, IndexError, LookupError), undecodable strings (UnicodeError),
# nesting too deep (RecursionError), a dtype string numpy cannot parse (SyntaxError), and numpy's
# own complaints about a reconstructed array's state (RuntimeError, SystemError).
_UNPICKLE_ERRORS = (
    pickle.UnpicklingError, EOFError, MemoryError, OverflowError, ValueError, TypeError, AttributeError,
    LookupError, UnicodeError, RecursionError, RuntimeError, SystemError, SyntaxError, struct.error,
)


def _latin1_bytes(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it (``encode(str, 'latin1')`` for bytes), nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as protocol-2 pickles use it (for ``b""``); no argument, so no allocation of any size."""
    if args:
        raise pickle.UnpicklingError("refusing bytes(...) with arguments")
    return b""


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) in (("__builtin__", "bytes"), ("builtins", "bytes")):
            return _empty_bytes
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold only arrays")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id: CIFAR batches hold only arrays")


def _key(key: object) -> object:
    if isinstance(key, bytes):
        return key.decode("latin1")
    return key


def read_cifar_batch(path: Path) -> dict[str, object]:
    """One CIFAR pickle batch as a dict with ``str`` keys, unpickled without running foreign code.

    Any failure to read or unpickle the file (damaged, truncated, crafted) is a
    ``MalformedDataError`` naming the file.
    """
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as err:
        raise MalformedDataError(f"{path}: cannot read ({err.strerror or err})") from err
    except _UNPICKLE_ERRORS as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise MalformedDataError(f"{path}: not a CIFAR pickle batch ({type(err).__name__}: {reason})") from err
    if not isinstance(batch, dict):
        raise MalformedDataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    return {_key(k): v for k, v in batch.items()}


def _labels(path: Path, labels: object, key: str, count: int, num_classes: int) -> np.ndarray:
    """The ``key`` entry of a batch as int64 ``[count]``, every label in ``0..num_classes - 1``."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise MalformedDataError(
                f"{path}: {key!r} must be a list of integers, got an array {labels.dtype} {list(labels.shape)}")
        values = labels
    elif isinstance(labels, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
            bad = next(v for v in labels if not isinstance(v, int) or isinstance(v, bool))
            raise MalformedDataError(f"{path}: {key!r} must be a list of integers, found {type(bad).__name__}")
        values = labels
    else:
        raise MalformedDataError(f"{path}: {key!r} must be a list of integers, got {type(labels).__name__}")
    if len(values) != count:
        raise MalformedDataError(f"{path}: expected data [N, 3072] with N labels, got N = {count} and {len(values)} labels")
    if count:
        low, high = min(values), max(values)
        if low < 0 or high >= num_classes:
            raise MalformedDataError(f"{path}: {key!r} expected 0..{num_classes - 1}, found {int(low)}..{int(high)}")
    return np.asarray(values, dtype=np.int64)


def _images(path: Path, data: object) -> np.ndarray:
    """The ``data`` entry of a batch: uint8 ``[N, 3072]`` (R, G, B planes of 32 x 32), as ``[N, 3, 32, 32]``."""
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise MalformedDataError(f"{path}: 'data' must be a uint8 array [N, 3072], got {got}")
    if len(data) == 0:
        raise MalformedDataError(f"{path}: 'data' holds no images (shape [0, 3072])")
    return data.reshape(-1, 3, 32, 32)


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
                found = sorted(str(k) for k in batch)[:10]
                raise MalformedDataError(f"{path}: expected keys 'data' and {key!r}, found {found}")
            data = _images(path, batch["data"])
            images.append(data)
            labels.append(_labels(path, batch[key], key, len(data), self.num_classes))
        return as_images(np.concatenate(images)), torch.as_tensor(np.concatenate(labels))

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.variant == 10:
            train, test = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        else:
            train, test = ["train"], ["test"]
        return *self._read(train), *self._read(test)
