"""DataModules: formats written here byte for byte, seeded splits, train-only scaling, clear errors."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules import (
    CIFARDataModule,
    DigitsDataModule,
    EpochSampler,
    MNISTDataModule,
    SyntheticDataModule,
    TensorSet,
    TimeSeriesDataModule,
    read_idx,
    seeded_split,
)
from tests.conftest import SHARED_DATA
from zoo.core.errors import ConfigError, MalformedDataError, MissingDataError


# -- writers for the on-disk formats -------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """IDX as LeCun documents it: 0, 0, type code (0x08 = uint8), ndim, big-endian uint32 sizes, data."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_mnist(folder: Path, n_train: int = 60, n_test: int = 20, compress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if compress else ""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels, compress)
        arrays[prefix] = (images, labels)
    return arrays["train"], arrays["t10k"]


def write_cifar(folder: Path, variant: int = 10, per_batch: int = 8) -> dict[str, np.ndarray]:
    """The "python version" layout: pickled dicts with bytes keys, data uint8 [N, 3072] (R, G, B planes)."""
    rng = np.random.default_rng(1)
    written = {}
    if variant == 10:
        folder = folder / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    else:
        folder = folder / "cifar-100-python"
        names = ["train", "test"]
    folder.mkdir(parents=True)
    for name in names:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"data": data, b"filenames": [b"x.png"] * per_batch}
        if variant == 10:
            batch[b"labels"] = rng.integers(0, 10, size=per_batch).tolist()
        else:
            batch[b"fine_labels"] = rng.integers(0, 100, size=per_batch).tolist()
            batch[b"coarse_labels"] = rng.integers(0, 20, size=per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = data
    return written


def write_ett(path: Path, rows: int = 200, columns: int = 4) -> np.ndarray:
    """ETT's layout: a date column, then numeric columns, the last one OT."""
    t = np.arange(rows, dtype=np.float64)
    names = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"][: columns - 1] + ["OT"]
    values = np.stack([np.sin(t / 5 + k) * (k + 1) + 0.01 * t * k for k in range(columns - 1)] + [t / 10.0], axis=1)
    lines = ["date," + ",".join(names)]
    lines += [f"2016-07-01 {i:05d},{','.join(f'{v:.6f}' for v in row)}" for i, row in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return np.round(values, 6)


# -- shared pieces -------------------------------------------------------------------------------
def test_seeded_split_is_disjoint_complete_and_reproducible():
    parts = seeded_split(100, [0.1, 0.2], seed=3)
    assert [len(p) for p in parts] == [70, 10, 20]
    assert sorted(torch.cat(parts).tolist()) == list(range(100))
    assert all(torch.equal(a, b) for a, b in zip(parts, seeded_split(100, [0.1, 0.2], seed=3)))
    assert not torch.equal(parts[1], seeded_split(100, [0.1, 0.2], seed=4)[1])
    with pytest.raises(ConfigError, match="sum to < 1"):
        seeded_split(10, [0.5, 0.5], 0)


def test_tensor_set_fetches_whole_batches():
    data = TensorSet(torch.arange(10.0), torch.arange(10) * 2)
    x, y = data.__getitems__([3, 1, 4])
    assert x.tolist() == [3.0, 1.0, 4.0] and y.tolist() == [6, 2, 8]
    assert [t.item() for t in data[7]] == [7.0, 14]
    with pytest.raises(ValueError, match="first dimension"):
        TensorSet(torch.zeros(3), torch.zeros(4))


def test_epoch_sampler_shuffles_per_epoch_shards_and_skips():
    data = TensorSet(torch.arange(20))
    sampler = EpochSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(epoch0) == sorted(epoch1) == list(range(20)) and epoch0 != epoch1
    sampler.set_epoch(0)
    sampler.skip = 6
    assert list(sampler) == epoch0[6:] and len(sampler) == 20
    assert list(sampler) == epoch0  # the skip applies to one epoch only
    shards = [list(EpochSampler(data, num_replicas=2, rank=r, shuffle=True, seed=0)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(20)) and not set(shards[0]) & set(shards[1])


def test_base_validates_arguments():
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        DigitsDataModule(batch_size=0)
    with pytest.raises(ConfigError, match="num_workers must be >= 0, got -2"):
        DigitsDataModule(num_workers=-2)


# -- digits --------------------------------------------------------------------------------------
def test_digits_splits_and_train_only_normalization():
    dm = DigitsDataModule(batch_size=32, seed=0)
    dm.setup("fit")
    sizes = [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert sum(sizes) == 1797 and sizes == [1258, 180, 359]
    x, y = dm.train_set.tensors
    assert x.shape[1:] == (1, 8, 8) and y.dtype == torch.long and set(y.unique().tolist()) == set(range(10))
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(1), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(1), atol=1e-4)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 8, 8) and labels.shape == (32,)
    other = DigitsDataModule(seed=1)
    other.setup("fit")
    assert not torch.equal(other.val_set.tensors[1], dm.val_set.tensors[1])


def test_mirrored_digits_are_the_same_split_flipped_left_to_right():
    plain, mirrored = DigitsDataModule(normalize=False), DigitsDataModule(normalize=False, mirror=True)
    plain.setup("fit")
    mirrored.setup("fit")
    for split in ("train_set", "val_set", "test_set"):
        (x, y), (xm, ym) = getattr(plain, split).tensors, getattr(mirrored, split).tensors
        assert torch.equal(xm, x.flip(-1)) and torch.equal(ym, y) and not torch.equal(xm, x)


# -- MNIST ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, array, compress)
    assert np.array_equal(read_idx(path), array)


def test_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(MalformedDataError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 4)
    with pytest.raises(MalformedDataError, match=r"declares shape \(10,\) \(10 bytes\) but holds 4 bytes"):
        read_idx(short)
    broken_gz = tmp_path / "x.gz"
    broken_gz.write_bytes(b"not gzip")
    with pytest.raises(MalformedDataError, match="cannot read"):
        read_idx(broken_gz)


@pytest.mark.parametrize("layout", ["flat", "torchvision", "gz"])
def test_mnist_reads_idx_files(tmp_path, layout):
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    (train_x, train_y), (test_x, test_y) = write_mnist(folder, compress=layout == "gz")
    dm = MNISTDataModule(data_dir=str(tmp_path), val_fraction=0.25, normalize=False)
    dm.setup()
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [45, 15, 20]
    x, y = dm.test_set.tensors
    assert torch.equal(x, torch.as_tensor(test_x).unsqueeze(1).float() / 255)
    assert torch.equal(y, torch.as_tensor(test_y, dtype=torch.long))
    seen = torch.cat([dm.train_set.tensors[1], dm.val_set.tensors[1]])
    assert sorted(seen.tolist()) == sorted(train_y.tolist())


def test_mnist_missing_and_malformed_files(tmp_path):
    with pytest.raises(MissingDataError, match=r"no train-images-idx3-ubyte .* under data_dir="):
        MNISTDataModule(data_dir=str(tmp_path)).setup()
    with pytest.raises(ConfigError, match="needs data_dir"):
        MNISTDataModule().setup()
    write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(5, 3, dtype=np.uint8))
    with pytest.raises(MalformedDataError, match=r"expected images \[N, H, W\] and labels \[N\]"):
        MNISTDataModule(data_dir=str(tmp_path)).setup()


# -- CIFAR ---------------------------------------------------------------------------------------
def test_cifar10_reads_pickle_batches(tmp_path):
    written = write_cifar(tmp_path, 10)
    dm = CIFARDataModule(data_dir=str(tmp_path), val_fraction=0.25, normalize=False)
    dm.setup()
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [30, 10, 8]
    x, _ = dm.test_set.tensors
    expected = torch.as_tensor(written["test_batch"]).reshape(-1, 3, 32, 32).float() / 255
    assert x.shape == (8, 3, 32, 32) and torch.equal(x, expected)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    write_cifar(tmp_path, 100)
    fine = CIFARDataModule(data_dir=str(tmp_path), num_classes=100)
    coarse = CIFARDataModule(data_dir=str(tmp_path), num_classes=100, coarse=True)
    fine.setup(), coarse.setup()
    assert coarse.num_classes == 20 and fine.num_classes == 100
    assert int(coarse.test_set.tensors[1].max()) < 20
    with pytest.raises(ConfigError, match="must be 10 or 100, got 7"):
        CIFARDataModule(num_classes=7)


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Payload()}))
    with pytest.raises(MalformedDataError, match="refusing to load builtins.print"):
        CIFARDataModule(data_dir=str(tmp_path)).setup()


def test_cifar_missing_files(tmp_path):
    with pytest.raises(MissingDataError, match="data_batch_1"):
        CIFARDataModule(data_dir=str(tmp_path)).setup()


# -- ETT-style CSV -------------------------------------------------------------------------------
def test_timeseries_chronological_windows_and_train_only_scaling(tmp_path):
    values = write_ett(tmp_path / "toy.csv", rows=200)
    dm = TimeSeriesDataModule(data_dir=str(tmp_path), file="toy.csv", lookback=12, horizon=4,
                              borders=[120, 160, 200], batch_size=8)
    dm.setup()
    mean, std = values[:120].mean(0), values[:120].std(0, ddof=1)
    assert np.allclose(dm.mean.numpy(), mean, atol=1e-4) and np.allclose(dm.std.numpy(), std, atol=1e-4)
    scaled = (values - mean) / std
    assert len(dm.train_set) == 120 - 12 - 4 + 1
    x, y = dm.train_set[0]
    assert x.shape == (12, 4) and y.shape == (4, 4)
    assert np.allclose(x.numpy(), scaled[:12], atol=1e-5) and np.allclose(y.numpy(), scaled[12:16], atol=1e-5)
    # validation windows look back into train rows for inputs, never for targets
    vx, vy = dm.val_set[0]
    assert np.allclose(vx.numpy(), scaled[108:120], atol=1e-5) and np.allclose(vy.numpy(), scaled[120:124], atol=1e-5)
    tx, ty = dm.test_set[len(dm.test_set) - 1]
    assert np.allclose(ty.numpy(), scaled[196:200], atol=1e-5)
    assert torch.allclose(dm.inverse_transform(ty), torch.as_tensor(values[196:200], dtype=torch.float32), atol=1e-3)
    bx, by = next(iter(dm.train_dataloader()))
    assert bx.shape == (8, 12, 4) and by.shape == (8, 4, 4)


@pytest.mark.parametrize("features, n_in, n_out", [("M", 4, 4), ("S", 1, 1), ("MS", 4, 1)])
def test_timeseries_feature_modes(tmp_path, features, n_in, n_out):
    write_ett(tmp_path / "toy.csv")
    dm = TimeSeriesDataModule(data_dir=str(tmp_path), file="toy.csv", features=features, lookback=8, horizon=2)
    dm.setup()
    x, y = dm.train_set[0]
    assert x.shape == (8, n_in) and y.shape == (2, n_out)
    assert dm.target_names[-1] == "OT"


def test_timeseries_column_selection_and_fraction_split(tmp_path):
    write_ett(tmp_path / "toy.csv", rows=100)
    dm = TimeSeriesDataModule(data_dir=str(tmp_path), file="toy.csv", columns=["HULL"], lookback=4, horizon=2,
                              val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    assert dm.input_names == ["HULL", "OT"] and dm.target_names == ["HULL", "OT"]
    assert len(dm.train_set) == 60 - 4 - 2 + 1 and len(dm.test_set) == 20 + 4 - 4 - 2 + 1


def test_timeseries_errors(tmp_path):
    write_ett(tmp_path / "toy.csv", rows=50)
    with pytest.raises(ConfigError, match=r"target column 'Y' not found; columns are \['HUFL', 'HULL', 'MUFL', 'OT'\]"):
        TimeSeriesDataModule(data_dir=str(tmp_path), file="toy.csv", target="Y").setup()
    with pytest.raises(ConfigError, match="features must be one of"):
        TimeSeriesDataModule(features="X")
    with pytest.raises(ConfigError, match="fewer than lookback \\+ horizon = 40"):
        TimeSeriesDataModule(data_dir=str(tmp_path), file="toy.csv", lookback=30, horizon=10).setup()
    with pytest.raises(ConfigError, match="borders ask for 99"):
        TimeSeriesDataModule(data_dir=str(tmp_path), file="toy.csv", borders=[20, 30, 99], lookback=4, horizon=2).setup()
    with pytest.raises(MissingDataError, match="no nope.csv"):
        TimeSeriesDataModule(data_dir=str(tmp_path), file="nope.csv").setup()
    (tmp_path / "bad.csv").write_text("date,a,OT\nx,1.0,oops\n")
    with pytest.raises(MalformedDataError, match="bad.csv:2: non-numeric value"):
        TimeSeriesDataModule(data_dir=str(tmp_path), file="bad.csv").setup()
    # a horizon longer than the test split, a look-back longer than the series: one line each
    with pytest.raises(ConfigError, match="the test split has 13 rows, fewer than lookback \\+ horizon = 19"):
        TimeSeriesDataModule(data_dir=str(tmp_path), file="toy.csv", lookback=8, horizon=11,
                             borders=[30, 45, 50]).setup()
    with pytest.raises(ConfigError, match="the train split has 35 rows, fewer than lookback \\+ horizon = 61"):
        TimeSeriesDataModule(data_dir=str(tmp_path), file="toy.csv", lookback=60, horizon=1).setup()
    # a column that is constant over the training rows: scaling would divide by zero
    values = write_ett(tmp_path / "flat.csv", rows=50)
    lines = (tmp_path / "flat.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        row[2] = "3.5"  # HULL
    (tmp_path / "flat.csv").write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    with pytest.raises(ConfigError, match="column 'HULL' is constant over the 35 training rows"):
        TimeSeriesDataModule(data_dir=str(tmp_path), file="flat.csv", lookback=4, horizon=2).setup()
    dm = TimeSeriesDataModule(data_dir=str(tmp_path), file="flat.csv", lookback=4, horizon=2, columns=["HUFL"])
    dm.setup()  # left out of the columns, it is no longer scaled
    assert dm.input_names == ["HUFL", "OT"] and values.shape == (50, 4)


@pytest.mark.skipif(not (SHARED_DATA / "timeseries" / "ETTh1.csv").is_file(), reason="../shared/data/timeseries/ETTh1.csv absent")
def test_real_etth1_standard_borders():
    dm = TimeSeriesDataModule(data_dir=str(SHARED_DATA / "timeseries"), borders=[8640, 11520, 14400],
                              lookback=96, horizon=24)
    dm.setup()
    assert dm.column_names == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [8521, 2857, 2857]  # every target row of val/test: 2880 - 24 + 1
    x, y = dm.train_set.__getitems__(list(range(len(dm.train_set))))
    assert x.shape == (8521, 96, 7) and y.shape == (8521, 24, 7)
    assert abs(float(dm.mean[-1]) - 17.13) < 0.1  # OT mean over the first 12 months


# -- non-finite and damaged files: one line naming the file, before any training -----------------
def _ett_with_cell(path: Path, line: int, column: str, cell: str, columns: int = 4) -> None:
    write_ett(path, rows=60, columns=columns)
    lines = path.read_text().splitlines()
    names = lines[0].split(",")
    row = lines[line - 1].split(",")
    row[names.index(column)] = cell
    lines[line - 1] = ",".join(row)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("cell, words", [
    ("nan", "non-finite value 'nan'"), ("NaN", "non-finite value 'NaN'"), ("inf", "non-finite value 'inf'"),
    ("-Infinity", "non-finite value '-Infinity'"), ("1e999", "non-finite value '1e999'"),
    ("", "an empty cell"), (" ", "an empty cell"), ("1.2.3", "non-numeric value '1.2.3'"),
])
def test_timeseries_non_finite_or_empty_cell_names_file_line_and_column(tmp_path, cell, words):
    _ett_with_cell(tmp_path / "toy.csv", 17, "HULL", cell)
    with pytest.raises(MalformedDataError) as info:
        TimeSeriesDataModule(data_dir=str(tmp_path), file="toy.csv", lookback=4, horizon=2).setup()
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'toy.csv'}:17: ") and words in message and "column 'HULL'" in message
    assert "\n" not in message


def test_timeseries_values_beyond_float32_are_refused(tmp_path):
    _ett_with_cell(tmp_path / "toy.csv", 50, "OT", "1e39")
    with pytest.raises(MalformedDataError, match=r"toy.csv: column 'OT' has values beyond the float32 range"):
        TimeSeriesDataModule(data_dir=str(tmp_path), file="toy.csv", lookback=4, horizon=2, scale=False).setup()


def test_timeseries_text_encoding_and_csv_errors_are_one_line(tmp_path):
    write_ett(tmp_path / "toy.csv", rows=60)
    raw = (tmp_path / "toy.csv").read_bytes()
    (tmp_path / "latin.csv").write_bytes(raw[:200] + b"\xe9" + raw[200:])
    with pytest.raises(MalformedDataError, match=r"latin.csv: not a UTF-8 text CSV"):
        TimeSeriesDataModule(data_dir=str(tmp_path), file="latin.csv").setup()
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + raw)  # a UTF-8 byte-order mark is fine
    bom = TimeSeriesDataModule(data_dir=str(tmp_path), file="bom.csv", lookback=4, horizon=2)
    bom.setup()
    assert bom.column_names == ["HUFL", "HULL", "MUFL", "OT"]


ETT_FIT = ["fit", "--config", "configs/ndlinear/etth1_dense_h24.yaml", "--data.borders", "null",
           "--data.lookback", "8", "--data.horizon", "4", "--model.lookback", "8", "--model.horizon", "4",
           "--trainer.enable_progress_bar=false", "--trainer.max_epochs=1"]


@pytest.mark.parametrize("cell", ["nan", "inf"])
def test_fit_on_an_ett_csv_with_a_non_finite_cell_is_one_error_line(tmp_path, capsys, cell):
    """What the user meets: `python -m zoo fit` stops at load, naming the file, the line and the column,
    instead of training to NaN weights."""
    from zoo.core.cli import main

    _ett_with_cell(tmp_path / "ETTh1.csv", 23, "MULL", cell, columns=7)
    with pytest.raises(SystemExit) as exit_info:
        main([*ETT_FIT, "--data.data_dir", str(tmp_path), f"--trainer.default_root_dir={tmp_path / 'runs'}"])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    assert lines[0] == (f"error: {tmp_path / 'ETTh1.csv'}:23: non-finite value {cell!r} in column 'MULL', expected "
                        "a finite number (NaN or inf would train to NaN)")
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def _cifar_batch(tmp_path: Path, batch: object, protocol: int = 2) -> Path:
    write_cifar(tmp_path, 10, per_batch=2)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(batch if isinstance(batch, bytes) else pickle.dumps(batch, protocol=protocol))
    return path


@pytest.mark.parametrize("batch, words", [
    (b"", "not a CIFAR pickle batch (EOFError"),
    (b"\x80\x02}q\x00(X\x04\x00\x00\x00data", "not a CIFAR pickle batch"),  # truncated
    # protocol-2 bytes through _codecs.encode with another codec (was a LookupError)
    (b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00xX\x05\x00\x00\x00la0in\x86R.", "refusing _codecs.encode"),
    (b"\x80\x02}q\x00(K\x01K\x02eb.", "not a CIFAR pickle batch"),  # APPENDS on a dict (was AttributeError)
    (b"\x80\x02h\x07.", "not a CIFAR pickle batch"),  # memo miss
    (b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\x7f.", "not a CIFAR pickle batch"),  # absurd frame
    (b"\x80\x02K\x01Q.", "refusing a persistent id"),
    ([1, 2], "expected a pickled dict, got list"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "'data' must be a uint8 array [N, 3072], got float32"),
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "got uint8 [2, 100]"),
    ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, "'data' holds no images"),
    ({b"data": [[0] * 3072] * 2, b"labels": [0, 1]}, "'data' must be a uint8 array [N, 3072], got list"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "'labels' expected 0..9, found 0..10"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -1]}, "'labels' expected 0..9, found -1..0"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10**30]}, "'labels' expected 0..9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1.0]}, "'labels' must be a list of integers, found float"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "N = 2 and 1 labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": b"ab"}, "'labels' must be a list of integers, got bytes"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "expected keys 'data' and 'labels'"),
])
def test_damaged_cifar_batches_are_one_line_naming_the_file(tmp_path, batch, words):
    path = _cifar_batch(tmp_path, batch)
    with pytest.raises(MalformedDataError) as info:
        CIFARDataModule(data_dir=str(tmp_path)).setup()
    message = str(info.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message, message


def test_cifar_accepts_labels_as_an_integer_array_and_empty_bytes(tmp_path):
    data = (np.arange(2 * 3072) % 251).astype(np.uint8).reshape(2, 3072)
    _cifar_batch(tmp_path, {b"batch_label": b"", b"data": data, b"labels": np.array([3, 4], np.int32)})
    dm = CIFARDataModule(data_dir=str(tmp_path), val_fraction=0.25, normalize=False)
    dm.setup()
    x = torch.cat([dm.train_set.tensors[0], dm.val_set.tensors[0]])
    y = torch.cat([dm.train_set.tensors[1], dm.val_set.tensors[1]])
    first = torch.as_tensor(data[0]).reshape(3, 32, 32).float() / 255
    assert len(x) == 10 and int(y[(x == first).flatten(1).all(1)][0]) == 3


@pytest.mark.parametrize("labels, words", [
    (np.array([1, 2, 11], np.uint8), "expected labels 0..9, found 1..11"),
    (np.array([1, -2, 3], np.int8), "expected labels 0..9, found -2..3"),
])
def test_mnist_labels_out_of_range_name_the_file(tmp_path, labels, words):
    write_mnist(tmp_path, n_train=3, n_test=3)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    code = 0x08 if labels.dtype == np.uint8 else 0x09
    path.write_bytes(bytes([0, 0, code, 1]) + struct.pack(">I", 3) + labels.tobytes())
    with pytest.raises(MalformedDataError, match=f"{path}: {words}"):
        MNISTDataModule(data_dir=str(tmp_path)).setup()


def test_mnist_float_pixels_and_bad_gzip_name_the_file(tmp_path):
    write_mnist(tmp_path, n_train=3, n_test=3)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x0D, 3]) + struct.pack(">3I", 3, 28, 28) + np.zeros(3 * 784, ">f4").tobytes())
    with pytest.raises(MalformedDataError, match=f"{path}: expected uint8 pixels"):
        MNISTDataModule(data_dir=str(tmp_path)).setup()
    gz = tmp_path / "x.gz"
    gz.write_bytes(gzip.compress(b"\0\0\x08\x01" + b"\0" * 100)[:-12] + b"\xff" * 12)
    with pytest.raises(MalformedDataError, match=f"{gz}: cannot read, not a valid gzip file"):
        read_idx(gz)


# -- synthetic -----------------------------------------------------------------------------------
class Blobs(SyntheticDataModule):
    def generate(self, n, generator):
        labels = torch.randint(0, 3, (n,), generator=generator)
        return torch.randn(n, 2, generator=generator) + labels[:, None].float() * 4, labels


def test_synthetic_splits_are_seeded_and_independent():
    a, b, c = Blobs(num_train=50, seed=1), Blobs(num_train=50, seed=1), Blobs(num_train=80, seed=1)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert not torch.equal(a.train_set.tensors[0][:10], a.val_set.tensors[0][:10])
    assert torch.equal(a.test_set.tensors[0], c.test_set.tensors[0])  # more training data, same test set
    with pytest.raises(ConfigError, match="num_val must be >= 1, got 0"):
        Blobs(num_val=0)
    with pytest.raises(TypeError):
        SyntheticDataModule()
