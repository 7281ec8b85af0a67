"""MNIST (and any dataset in the same IDX format, e.g. Fashion-MNIST) from files in ``data_dir``."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data_modules.image import ImageDataModule, as_images
from zoo.core.errors import MalformedDataError

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's format, optionally gzipped) into an array of its declared shape.

    Header: two zero bytes, a type code, the number of dimensions, then each size as a big-endian
    uint32; the data follows, big-endian, row-major.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise MalformedDataError(f"{path}: cannot read ({err.strerror or err})") from err
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error, MemoryError) as err:  # BadGzipFile is an OSError; bad deflate: zlib.error
            raise MalformedDataError(f"{path}: cannot read, not a valid gzip file ({err})") from err
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise MalformedDataError(f"{path}: not an IDX file (header {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MalformedDataError(f"{path}: IDX header declares {ndim} dimensions but the file ends early")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise MalformedDataError(
            f"{path}: IDX header declares shape {tuple(shape)} ({expected} bytes) but holds {len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


class MNISTDataModule(ImageDataModule):
    """MNIST from the four IDX files, gzipped or not, in ``data_dir`` or ``data_dir/MNIST/raw``.

    Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``). Validation is carved from the training
    files; the t10k files are the test split.
    """

    num_classes = 10

    def _read(self, stem: str) -> tuple[Path, np.ndarray]:
        names = [f"{folder}{stem}{ext}" for folder in ("", "MNIST/raw/") for ext in ("", ".gz")]
        path = self.find_file(*names)
        return path, read_idx(path)

    def _pair(self, prefix: str) -> tuple[Path, np.ndarray, np.ndarray]:
        (image_path, images), (label_path, labels) = (self._read(f"{prefix}-images-idx3-ubyte"),
                                                      self._read(f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or len(labels) == 0:
            raise MalformedDataError(
                f"{image_path} and {label_path}: expected images [N, H, W] and labels [N], N >= 1, "
                f"got {images.shape} and {labels.shape}"
            )
        if images.dtype != np.uint8:
            raise MalformedDataError(f"{image_path}: expected uint8 pixels (IDX type 0x08), got {images.dtype}")
        if labels.dtype.kind not in "iu":
            raise MalformedDataError(f"{label_path}: expected integer labels, got {labels.dtype}")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            raise MalformedDataError(f"{label_path}: expected labels 0..{self.num_classes - 1}, found {low}..{high}")
        return image_path, images, labels

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        (train_path, train_x, train_y), (test_path, test_x, test_y) = self._pair("train"), self._pair("t10k")
        if train_x.shape[1:] != test_x.shape[1:]:
            raise MalformedDataError(
                f"{test_path}: images of {test_x.shape[1]}x{test_x.shape[2]} pixels, but {train_path} holds "
                f"{train_x.shape[1]}x{train_x.shape[2]}"
            )
        as_labels = lambda y: torch.as_tensor(y.astype(np.int64))  # noqa: E731
        return as_images(train_x), as_labels(train_y), as_images(test_x), as_labels(test_y)
