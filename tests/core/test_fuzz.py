"""Fuzzing every file reader with damaged copies of valid files: the only failures allowed are the
project's own one-line errors (``ZooError``), never another exception, and a file that does load
must give finite data.

Each reader gets a valid file (or folder) written by the format's writer, then a few dozen mutants,
each from its own seeded generator (``default_rng([reader, case])``): byte flips, truncations,
inserted random bytes, duplicated or deleted chunks, tricky tokens spliced in (``nan``, ``inf``,
``1e999``, quotes, separators, a NUL, non-UTF-8 bytes), and for the JSON manifest and the ``.npz``
index also structural edits (a field replaced by a value of another type, shape or range). Half of
the positions fall within 256 bytes of either end of the file, where the headers are. A failure names
the reader, the seed of the mutant's generator, the mutation and the exception.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.alignab.test_antibody_data import HAND_CHECKED, antibody_rows, write_csv
from tests.data_modules.test_data_modules import write_cifar, write_ett, write_mnist
from zoo.core.errors import MissingDataError, ZooError

pytestmark = pytest.mark.usefixtures("one_thread")

TOKENS = [b"nan", b"NaN", b"inf", b"-inf", b"1e999", b"", b",", b"\t", b"\n", b"\r\n", b'"', b"\x00", b"\xff\xfe",
          b"\xc3", "é".encode(), b">", b"ATOM  ", b"-", b"1_0", b"   ", b"{", b"]", b"\\", b"9" * 30]


# -- mutations -----------------------------------------------------------------------------------
def _position(rng: np.random.Generator, n: int) -> int:
    """Uniform over the file half the time, else within 256 bytes of the start or the end."""
    if rng.random() < 0.5:
        return int(rng.integers(0, n + 1))
    edge = int(rng.integers(0, min(n, 256) + 1))
    return edge if rng.random() < 0.5 else n - edge


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One random damage to ``data`` and a description of it."""
    n = len(data)
    op = int(rng.integers(6))
    if op == 0:
        out = bytearray(data)
        count = int(rng.integers(1, 9))
        for _ in range(count):
            if out:
                out[min(_position(rng, n), n - 1)] = int(rng.integers(256))
        return bytes(out), f"{count} byte flips"
    if op == 1:
        at = _position(rng, n)
        return data[:at], f"truncated to {at} of {n} bytes"
    if op == 2:
        at, extra = _position(rng, n), rng.integers(0, 256, int(rng.integers(1, 33)), dtype=np.uint8).tobytes()
        return data[:at] + extra + data[at:], f"{len(extra)} random bytes inserted at {at}"
    if op == 3:
        start = _position(rng, n)
        chunk = data[start:start + int(rng.integers(1, 257))]
        at = _position(rng, n)
        return data[:at] + chunk + data[at:], f"{len(chunk)} bytes from {start} duplicated at {at}"
    if op == 4:
        start = _position(rng, n)
        length = int(rng.integers(1, 65))
        return data[:start] + data[start + length:], f"{length} bytes deleted at {start}"
    token = TOKENS[int(rng.integers(len(TOKENS)))]
    start = _position(rng, n)
    length = int(rng.integers(0, 9))
    return data[:start] + token + data[start + length:], f"{token!r} spliced over {length} bytes at {start}"


def mutate_json(value, rng: np.random.Generator, depth: int = 0):
    """Replace or delete one value somewhere in a JSON document (a structural edit)."""
    replacements = [None, True, -1, 0, 1.5, float("nan"), "", "x" * 70, "0" * 64, [], [1, 2], {}, {"a": 1}]
    if isinstance(value, (dict, list)) and value and (depth == 0 or rng.random() < 0.7):
        keys = list(value) if isinstance(value, dict) else list(range(len(value)))
        key = keys[int(rng.integers(len(keys)))]
        if rng.random() < 0.2:
            del value[key]
        else:
            value[key] = mutate_json(value[key], rng, depth + 1)
        return value
    return replacements[int(rng.integers(len(replacements)))]


# -- the readers: a valid file, then each mutant through the code a user's command runs ----------
def cifar_case(folder: Path) -> tuple[list[Path], Callable[[], None]]:
    from data_modules import CIFARDataModule

    write_cifar(folder, 10, per_batch=2)
    files = sorted((folder / "cifar-10-batches-py").iterdir())

    def run():
        data = CIFARDataModule(data_dir=str(folder), val_fraction=0.25)
        data.setup()
        assert torch.isfinite(data.train_set.tensors[0]).all()

    return files, run


def mnist_case(folder: Path, compress: bool) -> tuple[list[Path], Callable[[], None]]:
    from data_modules import MNISTDataModule

    write_mnist(folder, n_train=8, n_test=4, compress=compress)

    def run():
        data = MNISTDataModule(data_dir=str(folder), val_fraction=0.25)
        data.setup()
        assert torch.isfinite(data.train_set.tensors[0]).all()

    return sorted(folder.iterdir()), run


def ett_case(folder: Path) -> tuple[list[Path], Callable[[], None]]:
    from data_modules import TimeSeriesDataModule

    write_ett(folder / "toy.csv", rows=40, columns=3)

    def run():
        data = TimeSeriesDataModule(data_dir=str(folder), file="toy.csv", lookback=4, horizon=2)
        data.setup()
        for split in ("train", "val", "test"):
            x, y = getattr(data, f"{split}_set")[0]
            assert torch.isfinite(x).all() and torch.isfinite(y).all()

    return [folder / "toy.csv"], run


def antibody_case(folder: Path, fasta: bool) -> tuple[list[Path], Callable[[], None]]:
    from data_modules.antibody import AntibodySequenceDataModule

    rows = antibody_rows(6)
    if fasta:
        path = folder / "seqs.fasta"
        path.write_text("".join(f">{name} heavy\n{seq[:60]}\n{seq[60:]}\n" for name, seq in rows))
    else:
        path = write_csv(folder / "seqs.csv", rows)

    def run():
        data = AntibodySequenceDataModule(data_dir=str(folder), file=path.name, val_fraction=0.2,
                                          test_fraction=0.2, batch_size=2)
        data.setup()

    return [path], run


def _pdb_chain(chain: str, sequence: str, origin: float) -> list[str]:
    """ATOM records of a chain: N, CA, C, O of each residue along a line (a PDB writer's format)."""
    from data_modules.residues import ONE_TO_THREE

    atom = "ATOM  {:5d}  {:<3} {} {}{:4d}    {:8.3f}{:8.3f}{:8.3f}  1.00  0.00           {}\n"
    lines, serial = [], 1
    for i, one in enumerate(sequence):
        for name, (dx, dy) in (("N", (0.0, 0.0)), ("CA", (1.2, 0.8)), ("C", (2.4, 0.0)), ("O", (2.4, -1.2))):
            lines.append(atom.format(serial, name, ONE_TO_THREE[one], chain, i + 1, 3.8 * i + dx, origin + dy,
                                     0.0, name[0]))
            serial += 1
    return [*lines, "TER\n"]


def pdb_case(folder: Path) -> tuple[list[Path], Callable[[], None]]:
    from data_modules.complexes import Case, load_complex

    heavy = HAND_CHECKED[0][2]  # trastuzumab VH: its CDRs are numbered
    (folder / "1ABC_r_b.pdb").write_text("".join(_pdb_chain("H", heavy, 0.0)) + "END\n")
    (folder / "1ABC_l_b.pdb").write_text("".join(_pdb_chain("A", "KVFGRCELAAAMKRHGL", 3.0)) + "END\n")
    (folder / "cases.tsv").write_text("Complex PDB\tName\n1ABC_H:A\ttest\n")

    def run():
        from data_modules.complexes import read_cases

        for case in read_cases(folder / "cases.tsv"):
            complex_ = load_complex(folder, Case(case.name, case.antibody, case.antigen))
            assert torch.isfinite(complex_.coords).all()

    return sorted(folder.iterdir()), run


def manifest_case(folder: Path, monkeypatch) -> tuple[list[Path], Callable[[], None]]:
    from zoo.core import registry

    entry = {"file": "digits-cnn-00000000.ckpt", "sha256": "0" * 64, "class": "DigitsClassifier",
             "configs": ["configs/ndlinear/digits_cnn.yaml"], "metrics": {"test/acc": 0.9, "test/loss": 0.3}}
    manifest = {"digits-cnn": entry, "other": {**entry, "file": "other-1.ckpt", "metrics": {}}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(folder))

    def run():
        registry.main([])  # `python -m zoo pretrained`
        for name in registry.list_pretrained():
            try:
                registry.load_pretrained(name)
            except ZooError:  # the checkpoint files are absent: a one-line CheckpointError
                continue
            raise AssertionError(f"load_pretrained({name!r}) loaded a checkpoint that does not exist")

    return [folder / "manifest.json"], run


def dp_index_case(folder: Path, kind: str) -> tuple[list[Path], Callable[[], None]]:
    from zoo.dp_strings import DPEditIndex, DPHammingIndex, load

    rng = np.random.default_rng(5)
    x = rng.integers(0, 2, (6, 12)).astype(np.uint8)
    cls = DPHammingIndex if kind == "hamming" else DPEditIndex
    path = cls(x, 2.0, 3, seed=1, noise_seed=0).save(folder / "index.npz")

    def run():
        index = load(path)
        estimates = index.query(np.zeros(index.n, np.uint8))
        assert np.isfinite(estimates).all() and len(estimates) == index.m

    return [path], run


def _npz_field_edit(path: Path, rng: np.random.Generator) -> tuple[bytes, str]:
    """The index with one field replaced by an array of another value, dtype or shape."""
    with np.load(path, allow_pickle=False) as f:
        state = {k: f[k] for k in f.files}
    key = sorted(state)[int(rng.integers(len(state)))]
    old = state[key]
    choices = [np.array(np.nan), np.array(np.inf), np.array(-1), np.array(0), np.array(10**6), np.array(1e-300),
               np.array("hamming"), np.array(["x", "y"]), np.zeros((2, 3)), np.array([object()], dtype=object)]
    if old.ndim:
        choices += [old[..., :-1], old[:-1], old.T, np.concatenate([old, old])]
    if old.dtype.kind in "biuf":
        choices += [old.astype(np.float64), old + 1, old * 7, old - 1]
    new = choices[int(rng.integers(len(choices)))]
    buffer = io.BytesIO()
    np.savez(buffer, **{**state, key: new})  # an object array is pickled inside the .npy
    return buffer.getvalue(), f"field {key!r} ({old.dtype} {list(old.shape)}) set to {new.dtype} {list(new.shape)}"


def _json_edit(path: Path, rng: np.random.Generator) -> tuple[bytes, str]:
    document = json.loads(path.read_text())
    edited = mutate_json(document, rng)
    return json.dumps(edited).encode(), f"structural edit: {json.dumps(edited)[:120]}"


# (name, number of mutants, setup(folder, monkeypatch) -> (files, run), structural edit or None)
READERS = [
    ("cifar", 300, lambda folder, mp: cifar_case(folder), None),
    ("mnist-idx", 60, lambda folder, mp: mnist_case(folder, False), None),
    ("mnist-idx-gz", 60, lambda folder, mp: mnist_case(folder, True), None),
    ("ett-csv", 120, lambda folder, mp: ett_case(folder), None),
    ("oas-csv", 80, lambda folder, mp: antibody_case(folder, False), None),
    ("fasta", 80, lambda folder, mp: antibody_case(folder, True), None),
    ("pdb", 80, lambda folder, mp: pdb_case(folder), None),
    ("manifest", 120, manifest_case, _json_edit),
    ("dp-index-hamming", 100, lambda folder, mp: dp_index_case(folder, "hamming"), _npz_field_edit),
    ("dp-index-edit", 100, lambda folder, mp: dp_index_case(folder, "edit"), _npz_field_edit),
]


def test_every_reader_survives_mutated_files(tmp_path, monkeypatch, capsys):
    failures, counts, started = [], {}, time.perf_counter()
    for reader_number, (name, cases, setup, structural) in enumerate(READERS):
        folder = tmp_path / name
        folder.mkdir()
        files, run = setup(folder, monkeypatch)
        run()  # the valid files load
        originals = {path: path.read_bytes() for path in files}
        loaded = refused = 0
        for case in range(cases):
            rng = np.random.default_rng([reader_number, case])
            target = files[int(rng.integers(len(files)))]
            if structural is not None and rng.random() < 0.5:
                damaged, what = structural(target, rng)
            else:
                damaged, what = mutate(originals[target], rng)
            target.write_bytes(damaged)
            try:
                run()
                loaded += 1
            except ZooError as err:
                refused += 1
                message = str(err)
                named = target.name in message or isinstance(err, MissingDataError)  # e.g. a renamed case
                if "\n" in message or not named:
                    failures.append(f"{name} seed [{reader_number}, {case}] ({target.name}: {what}): "
                                    f"{type(err).__name__} is not one "
                                    f"line naming {target.name}: {message[:300]!r}")
            except Exception as err:  # anything else is the bug this test looks for
                failures.append(f"{name} seed [{reader_number}, {case}] ({target.name}: {what}): {type(err).__name__}: "
                                f"{str(err)[:300]}")
            finally:
                target.write_bytes(originals[target])
                capsys.readouterr()
        counts[name] = (loaded, refused)
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        total = sum(a + b for a, b in counts.values())
        print(f"\nfuzz: {total} mutants in {elapsed:.1f} s; loaded/refused per reader: {counts}")
    assert elapsed < 60, f"the fuzz test took {elapsed:.0f} s; keep it fast"
    assert not failures, f"{len(failures)} mutants escaped:\n" + "\n".join(failures[:40])


# -- the manifest: valid JSON of the wrong shape is one line naming the file and the entry ----------
GOOD_ENTRY = {"file": "digits-cnn-9d82f887.ckpt", "sha256": "ab" * 32, "class": "ImageClassifier",
              "metrics": {"test/acc": 0.9}}
BAD_MANIFESTS = [
    ([GOOD_ENTRY], "expected a JSON object of entries {name: {file, sha256, class, ...}}, got a JSON list"),
    ("digits", "got a JSON str"),
    ({"digits-cnn": [1, 2]}, "entry 'digits-cnn': expected an object with file, sha256 and class, got list"),
    ({"digits-cnn": {k: v for k, v in GOOD_ENTRY.items() if k != "sha256"}},
     "entry 'digits-cnn': missing sha256 (every entry needs file, sha256 and class)"),
    ({"digits-cnn": {"metrics": {}}}, "entry 'digits-cnn': missing file, sha256, class"),
    ({"digits-cnn": {**GOOD_ENTRY, "sha256": "abc"}}, "entry 'digits-cnn': 'sha256' must be 64 lowercase hex digits, got 'abc'"),
    ({"digits-cnn": {**GOOD_ENTRY, "sha256": "AB" * 32}}, "'sha256' must be 64 lowercase hex digits"),
    ({"digits-cnn": {**GOOD_ENTRY, "sha256": None}}, "'sha256' must be 64 lowercase hex digits, got 'None'"),
    ({"digits-cnn": {**GOOD_ENTRY, "file": 3}}, "entry 'digits-cnn': 'file' must be a file name under the checkpoints folder, got 3"),
    ({"digits-cnn": {**GOOD_ENTRY, "file": "../../etc/passwd"}}, "got '../../etc/passwd'"),
    ({"digits-cnn": {**GOOD_ENTRY, "file": "/etc/passwd"}}, "got '/etc/passwd'"),
    ({"digits-cnn": {**GOOD_ENTRY, "class": ["ImageClassifier"]}}, "entry 'digits-cnn': 'class' must be a model class name"),
    ({"digits-cnn": {**GOOD_ENTRY, "metrics": {"test/acc": "high"}}}, "entry 'digits-cnn': 'metrics' must be an object of numbers"),
    ({"digits-cnn": {**GOOD_ENTRY, "metrics": [0.9]}}, "'metrics' must be an object of numbers, got [0.9]"),
]


@pytest.mark.parametrize("manifest, words", BAD_MANIFESTS, ids=[str(i) for i in range(len(BAD_MANIFESTS))])
def test_manifest_of_the_wrong_shape_is_one_error_line(tmp_path, monkeypatch, capsys, manifest, words):
    import zoo
    from zoo.core.cli import main
    from zoo.core.errors import CheckpointError

    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path))
    for args in (["pretrained"], ["pretrained", "digits-cnn"]):
        with pytest.raises(SystemExit) as info:
            main(args)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1 and err.startswith(f"error: {path}: "), err
        assert words in err, err
    with pytest.raises(CheckpointError, match=f"^{path}: ") as info:
        zoo.load_pretrained("digits-cnn")
    assert words in str(info.value)


@pytest.mark.parametrize("content, words", [
    (b"", "not valid JSON"), (b"{\"a\": ", "not valid JSON"), (b"\xff\xfe{}", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"), (b"{\"a\": " + b"9" * 5000 + b"}", "not valid JSON"),
])
def test_manifest_that_is_not_json_is_one_error_line(tmp_path, monkeypatch, content, words):
    from zoo.core.errors import CheckpointError
    from zoo.core.registry import list_pretrained

    (tmp_path / "manifest.json").write_bytes(content)
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path))
    with pytest.raises(CheckpointError, match=f"^{tmp_path / 'manifest.json'}: {words}") as info:
        list_pretrained()
    assert "\n" not in str(info.value)


def test_manifest_error_in_a_fresh_process(tmp_path):
    from tests.conftest import run_zoo

    (tmp_path / "manifest.json").write_text(json.dumps({"digits-cnn": {"file": "x.ckpt", "class": "ImageClassifier"}}))
    result = run_zoo("pretrained", env={"ZOO_CHECKPOINTS": str(tmp_path)}, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"error: {tmp_path / 'manifest.json'}: entry 'digits-cnn': missing sha256 "
                             "(every entry needs file, sha256 and class)\n")


def test_the_shipped_manifest_passes_the_checks():
    from tests.conftest import ROOT
    from zoo.core.registry import read_manifest

    assert len(read_manifest(ROOT / "checkpoints")) >= 1


# -- text readers: damage once a traceback, now one line naming the file ---------------------------
def test_antibody_csv_and_fasta_damage_is_one_line(tmp_path):
    from data_modules.antibody import read_sequences
    from zoo.core.errors import MalformedDataError

    rows = antibody_rows(3)
    short = write_csv(tmp_path / "short.csv", rows)
    short.write_text(short.read_text() + "ab9\n")  # a row without its sequence field (was AttributeError)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(write_csv(tmp_path / "ok.csv", rows).read_bytes().replace(b"ab1", b"ab\xe91"))
    fasta = tmp_path / "latin.fasta"
    fasta.write_bytes(b">ab\xe90\n" + rows[0][1].encode() + b"\n")
    cases = [(short, f"{short}:5: 1 fields, the header has 2"), (latin, f"{latin}: not a UTF-8 text CSV"),
             (fasta, f"{fasta}: not a FASTA text file"), (tmp_path / "absent.csv", "no such file")]
    for path, words in cases:
        with pytest.raises(ZooError) as info:
            read_sequences(path)
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert isinstance(info.value, FileNotFoundError)  # MissingDataError keeps `except FileNotFoundError` working
    with pytest.raises(MalformedDataError):
        read_sequences(short)


@pytest.mark.parametrize("edit, words", [
    (lambda line: line[:30] + "     nan" + line[38:], "chain 'H' residue 1 atom CA: non-finite coordinates (nan, 0.8, 0)"),
    (lambda line: line[:38] + "    -inf" + line[46:], "non-finite coordinates (1.2, -inf, 0)"),
    (lambda line: line[:38] + "   abcde" + line[46:], "not a readable PDB file"),
])
def test_pdb_with_bad_coordinates_is_one_line(tmp_path, edit, words):
    from data_modules.complexes import Case, load_complex

    pdb_case(tmp_path)
    path = tmp_path / "1ABC_r_b.pdb"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = edit(lines[1])  # the CA of residue 1 of chain H
    path.write_text("".join(lines))
    with pytest.raises(ZooError) as info:
        load_complex(tmp_path, Case("1ABC", ("H",), ("A",)))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message, message


def test_cases_file_that_is_not_text_is_one_line(tmp_path):
    from data_modules.complexes import read_cases

    path = tmp_path / "cases.tsv"
    path.write_bytes(b"Complex PDB\tName\n1ABC_H:A\t\xff\xfe\n")
    with pytest.raises(ZooError, match=f"^{path}: not a tab-separated text file"):
        read_cases(path)
