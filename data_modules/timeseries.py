"""Multivariate time series from an ETT-style CSV: chronological split, train-only scaling, windows."""

from __future__ import annotations

import csv
import math

import torch
from torch import Tensor
from torch.utils.data import Dataset

from data_modules.base import ZooDataModule
from zoo.core.errors import ConfigError, MalformedDataError

FEATURE_MODES = ("M", "S", "MS")


def read_csv_columns(path, date_column: str | None) -> tuple[list[str], Tensor]:
    """Numeric columns of a CSV with a header row as a float64 ``[rows, columns]`` tensor.

    Every cell must be a finite number: an empty, non-numeric, NaN or infinite cell raises
    ``MalformedDataError`` naming the file, the line and the column (such data would train to NaN).
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise MalformedDataError(f"{path}: empty file, expected a header row")
            keep = [i for i, name in enumerate(header) if name != date_column]
            rows = []
            for row in reader:
                if not row:
                    continue
                line = reader.line_num
                if len(row) != len(header):
                    raise MalformedDataError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
                try:
                    values = [float(row[i]) for i in keep]
                except ValueError:
                    values = None
                if values is None or not all(map(math.isfinite, values)):
                    _bad_cell(path, line, header, row, keep)
                rows.append(values)
    except UnicodeDecodeError as err:
        raise MalformedDataError(f"{path}: not a UTF-8 text CSV ({err.reason} at byte {err.start} of a block)") from err
    except csv.Error as err:
        raise MalformedDataError(f"{path}:{reader.line_num}: not a valid CSV line ({err})") from err
    if not rows:
        raise MalformedDataError(f"{path}: no data rows")
    return [header[i] for i in keep], torch.tensor(rows, dtype=torch.float64)


def _bad_cell(path, line: int, header: list[str], row: list[str], keep: list[int]) -> None:
    """Raise for the first cell of ``row`` that is not a finite number, naming its line and column."""
    for i in keep:
        cell = row[i]
        try:
            value = float(cell)
        except ValueError:
            what = "an empty cell" if not cell.strip() else f"non-numeric value {cell[:40]!r}"
            raise MalformedDataError(f"{path}:{line}: {what} in column {header[i]!r}, expected a number") from None
        if not math.isfinite(value):
            raise MalformedDataError(
                f"{path}:{line}: non-finite value {cell.strip()[:40]!r} in column {header[i]!r}, expected a finite "
                "number (NaN or inf would train to NaN)"
            )


class WindowSet(Dataset):
    """Sliding windows: input ``x[t : t+lookback]`` and target ``y[t+lookback : t+lookback+horizon]``."""

    def __init__(self, inputs: Tensor, targets: Tensor, lookback: int, horizon: int) -> None:
        self.inputs, self.targets = inputs, targets
        self.lookback, self.horizon = lookback, horizon
        self.length = len(inputs) - lookback - horizon + 1
        self._past = torch.arange(lookback)
        self._future = torch.arange(lookback, lookback + horizon)

    def __len__(self) -> int:
        return max(self.length, 0)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        start = torch.as_tensor(indices, dtype=torch.long)[:, None]
        return self.inputs[start + self._past], self.targets[start + self._future]


class TimeSeriesDataModule(ZooDataModule):
    """Forecasting windows from an ETT-style CSV (a date column, then numeric columns).

    Split chronologically into train / val / test; val and test windows may look back into the
    previous split for their inputs, never for their targets. Scaling (per column mean and std) is
    fit on the training rows only, so no statistic of the future leaks into training.

    Args:
        file: CSV file name under ``data_dir``.
        target: the column to forecast (``OT`` for ETT).
        features: ``M`` all columns in and out, ``S`` target in and out, ``MS`` all in, target out.
        columns: restrict the input columns to these (the target is always kept).
        lookback: input window length; ``horizon``: forecast length.
        borders: rows ending train, val and test (ETTh convention: ``[8640, 11520, 14400]``);
            if omitted, ``val_fraction`` and ``test_fraction`` of all rows, taken from the end.
        scale: standardize with the training statistics.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        file: str = "ETTh1.csv",
        target: str = "OT",
        features: str = "M",
        columns: list[str] | None = None,
        lookback: int = 96,
        horizon: int = 24,
        borders: list[int] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        scale: bool = True,
        date_column: str = "date",
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, seed)
        if features not in FEATURE_MODES:
            raise ConfigError(f"features must be one of {FEATURE_MODES}, got {features!r}")
        if lookback < 1 or horizon < 1:
            raise ConfigError(f"lookback and horizon must be >= 1, got {lookback} and {horizon}")
        if borders is not None and (len(borders) != 3 or not 0 < borders[0] < borders[1] < borders[2]):
            raise ConfigError(f"borders must be 3 increasing row numbers [train_end, val_end, test_end], got {borders}")
        self.file, self.target, self.features, self.columns = file, target, features, columns
        self.lookback, self.horizon = lookback, horizon
        self.borders, self.val_fraction, self.test_fraction = borders, val_fraction, test_fraction
        self.scale, self.date_column = scale, date_column
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.column_names: list[str] = []
        self.input_names: list[str] = []
        self.target_names: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        path = self.find_file(self.file)
        names, data = read_csv_columns(path, self.date_column)
        if self.target not in names:
            raise ConfigError(f"{path}: target column {self.target!r} not found; columns are {names}")
        inputs = [self.target] if self.features == "S" else list(self.columns or names)
        missing = [c for c in inputs if c not in names]
        if missing:
            raise ConfigError(f"{path}: columns {missing} not found; columns are {names}")
        if self.target not in inputs:
            inputs.append(self.target)
        outputs = inputs if self.features == "M" else [self.target]
        self.column_names, self.input_names, self.target_names = names, inputs, outputs

        train_end, val_end, test_end = self._borders(len(data), path)
        spans = {"train": (0, train_end), "val": (train_end - self.lookback, val_end),
                 "test": (val_end - self.lookback, test_end)}
        for split, (start, end) in spans.items():  # before scaling: one training row has no std
            if end - start < self.lookback + self.horizon:
                raise ConfigError(
                    f"{path}: the {split} split has {end - start} rows, fewer than lookback + horizon = "
                    f"{self.lookback + self.horizon}: lower them or change borders/fractions"
                )
        if self.scale:
            mean, std = data[:train_end].mean(0), data[:train_end].std(0)
            flat = ~(std > 1e-12 * mean.abs().clamp_min(1.0))
            constant = [c for i, c in enumerate(names) if flat[i] and c in set(inputs) | set(outputs)]
            if constant:
                raise ConfigError(
                    f"{path}: column {constant[0]!r} is constant over the {train_end} training rows (std 0), so "
                    "scaling would divide by zero; leave it out with data.columns, or set data.scale false"
                )
            std = torch.where(flat, torch.ones_like(std), std)  # constant columns no model reads
            data = (data - mean) / std
            self.mean, self.std = mean.float(), std.float()
        data = data.float()
        finite = torch.isfinite(data).all(0)
        if not finite.all():
            column = names[int((~finite).nonzero()[0])]
            raise MalformedDataError(
                f"{path}: column {column!r} has values beyond the float32 range"
                f"{' after scaling by the training rows' if self.scale else ''}; rescale the file"
            )
        x = data[:, [names.index(c) for c in inputs]]
        y = data[:, [names.index(c) for c in outputs]]
        for split, (start, end) in spans.items():
            window_set = WindowSet(x[start:end].contiguous(), y[start:end].contiguous(), self.lookback, self.horizon)
            setattr(self, f"{split}_set", window_set)

    def _borders(self, rows: int, path) -> tuple[int, int, int]:
        if self.borders is not None:
            if self.borders[2] > rows:
                raise ConfigError(f"{path} has {rows} rows, borders ask for {self.borders[2]}")
            return tuple(self.borders)
        test = round(rows * self.test_fraction)
        val = round(rows * self.val_fraction)
        return rows - val - test, rows - test, rows

    def inverse_transform(self, y: Tensor) -> Tensor:
        """Undo the scaling of a target tensor ``[..., len(target_names)]`` (original units)."""
        if self.mean is None:
            return y
        index = [self.column_names.index(c) for c in self.target_names]
        return y * self.std[index].to(y) + self.mean[index].to(y)
