"""zoo.dp_strings against slow references: loop sketches and walks, exact enumeration of every
release under neighbouring databases, binomial flip rates, unbiased debiasing, library distances."""

from __future__ import annotations

import itertools
import math
import struct
import zipfile

import editdistance
import numpy as np
import pytest
from rapidfuzz.distance import Hamming, Levenshtein
from scipy import stats

from tests.conftest import run_zoo
from zoo.core.errors import ConfigError, MalformedDataError, MissingDataError
from zoo.dp_strings import DPEditIndex, DPHammingIndex, cgk_embed, hamming, load, read_strings


# -- slow, obviously correct references --------------------------------------------------------------
def loop_sketch(x: np.ndarray, buckets: np.ndarray) -> list[int]:
    """Released bits of one string: per level, per non-empty bucket in increasing order, the XOR."""
    bits = []
    for row in buckets:
        for bucket in sorted(set(row.tolist())):
            parity = 0
            for i, h in enumerate(row):
                if h == bucket:
                    parity ^= int(x[i])
            bits.append(parity)
    return bits


def loop_cgk(x: list[int], walk: np.ndarray) -> list[int]:
    out, i = [], 0
    for step in walk:
        if i < len(x):
            out.append(x[i])
            i += int(step[x[i]])
        else:
            out.append(0)
    return out


def loop_levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def released_bits(index, s: int = 0) -> np.ndarray:
    """The released (flipped) bits of sketch ``s``, padding removed: ``[m, B]``."""
    bits = np.unpackbits(index.released[s], axis=1)
    return bits[:, index.sketches[s].mask().astype(bool)]


def random_db(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    return rng.integers(0, 2, (m, n)).astype(np.uint8)


# -- input checks --------------------------------------------------------------------------------
@pytest.mark.parametrize("database, words", [
    (["0101", "011"], "string 2 has length 3, expected 4"),
    (["0101", "01a1"], "string 2 has characters ['a']"),
    ([], "at least one bit string"),
    ("0101", "one string"),
    (np.array([[0, 2]]), "only 0/1"),
])
def test_bad_database(database, words):
    with pytest.raises(MalformedDataError, match=words.replace("[", r"\[").replace("]", r"\]")):
        DPHammingIndex(database, 1.0, 1)


@pytest.mark.parametrize("kwargs, words", [
    ({"epsilon": 0.0}, "epsilon must be a finite number > 0, got 0.0"),
    ({"epsilon": -1.0}, "epsilon"),
    ({"epsilon": float("nan")}, "epsilon"),
    ({"k": 0}, r"k must be an integer in \[1, n = 4\], got 0"),
    ({"k": 5}, "got 5"),
    ({"k": 1.5}, "got 1.5"),
    ({"unit": "row"}, "unit must be one of"),
])
def test_bad_parameters(kwargs, words):
    args = {"epsilon": 1.0, "k": 2} | kwargs
    with pytest.raises(ConfigError, match=words):
        DPHammingIndex(["0101", "1100"], **args)
    with pytest.raises(ConfigError, match=words):
        DPEditIndex(["0101", "1100"], **args)


def test_bad_query_and_walks():
    index = DPHammingIndex(["0101", "1100"], 1.0, 2, noise_seed=0)
    with pytest.raises(MalformedDataError, match="query has length 3, expected n = 4"):
        index.query("010")
    with pytest.raises(MalformedDataError, match="characters"):
        index.query("01x1")
    with pytest.raises(ConfigError, match="walks must be an integer >= 1, got 0"):
        DPEditIndex(["0101"], 1.0, 1, walks=0)


# -- the sketch, the walk, exact distances -------------------------------------------------------
@pytest.mark.parametrize("n, k", [(1, 1), (7, 3), (64, 16), (100, 33)])
def test_sketch_matches_loop(n, k):
    rng = np.random.default_rng(n)
    x = random_db(rng, 5, n)
    index = DPHammingIndex(x, 1e6, k, seed=k, noise_seed=0)  # p = e^-(1e6 / B): no flips
    assert index.p == 0.0
    sketch = index.sketches[0]
    assert sketch.widths[-1] >= 4 * k and len(sketch.widths) == math.ceil(math.log2(k)) + 1
    expected = np.array([loop_sketch(row, sketch.buckets) for row in x])
    assert np.array_equal(released_bits(index), expected)
    assert sketch.bits == expected.shape[1]


def test_cgk_matches_loop():
    rng = np.random.default_rng(0)
    x = random_db(rng, 20, 15)
    walk = rng.integers(0, 2, (45, 2)).astype(np.uint8)
    expected = np.array([loop_cgk(row.tolist(), walk) for row in x])
    assert np.array_equal(cgk_embed(x, walk), expected)
    assert all(np.array_equal(cgk_embed(row[None], walk)[0], e) for row, e in zip(x, expected))


def test_exact_distances_match_libraries():
    rng = np.random.default_rng(1)
    x, b = random_db(rng, 40, 30), rng.integers(0, 2, 30).astype(np.uint8)
    strings, query = ["".join(map(str, row)) for row in x], "".join(map(str, b))
    assert hamming(x, b).tolist() == [Hamming.distance(s, query) for s in strings]
    for s in strings:
        short = s[: rng.integers(1, 30)]
        assert Levenshtein.distance(short, query) == editdistance.eval(short, query) == loop_levenshtein(short, query)


def test_cgk_distortion_bounds():
    """CGK: ED/2 <= HD of the embeddings, always (measured also in benchmarks/dp_strings/error_time.py)."""
    rng = np.random.default_rng(2)
    x = random_db(rng, 200, 40)
    b = x[0].copy()
    for row in x:  # a few edits of b
        s = b.tolist()
        for _ in range(rng.integers(0, 6)):
            p = int(rng.integers(len(s)))
            s = s[:p] + s[p + 1:] + [int(rng.integers(2))] if rng.random() < 0.5 else s[:p] + [1 - s[p]] + s[p + 1:]
        row[:] = s
    walk = rng.integers(0, 2, (120, 2)).astype(np.uint8)
    hd = (cgk_embed(x, walk) != cgk_embed(b[None], walk)).sum(1)
    ed = np.array([Levenshtein.distance(row.tobytes(), b.tobytes()) for row in x])
    assert (ed <= 2 * hd).all() and (hd[ed == 0] == 0).all()


# -- randomized response -------------------------------------------------------------------------
@pytest.mark.parametrize("unit, epsilon", [("string", 20.0), ("string", 200.0), ("bit", 1.0), ("bit", 8.0)])
def test_flip_rate(unit, epsilon):
    rng = np.random.default_rng(3)
    x = random_db(rng, 3000, 64)
    index = DPHammingIndex(x, epsilon, 8, seed=0, unit=unit, noise_seed=4)
    clean = DPHammingIndex(x, 1e6, 8, seed=0, noise_seed=0)
    bits = index.sketches[0].bits
    assert index.eps_bit == pytest.approx(epsilon / (bits if unit == "string" else 4))
    assert index.p == pytest.approx(1 / (1 + math.exp(index.eps_bit)))
    flips = (released_bits(index) != released_bits(clean)).sum()
    test = stats.binomtest(int(flips), released_bits(index).size, index.p)
    assert test.pvalue > 1e-4, (flips, released_bits(index).size * index.p)


def release_table(index, databases: np.ndarray, embed=None) -> np.ndarray:
    """Exact P(release | database) of every possible release, ``[databases, 2^(m B)]``, from the public
    hashes, the loop sketch and the stated flip probability."""
    buckets = index.sketches[0].buckets
    sketches = np.array([[loop_sketch(embed(row) if embed else row, buckets) for row in db] for db in databases])
    sketches = sketches.reshape(len(databases), -1)
    outcomes = np.array(list(itertools.product((0, 1), repeat=sketches.shape[1])), np.uint8)
    differ = (outcomes[None] != sketches[:, None]).sum(-1)
    return index.p ** differ * (1 - index.p) ** (sketches.shape[1] - differ), outcomes


def max_ratio(table: np.ndarray, pairs) -> float:
    return max(float((table[a] / table[b]).max()) for a, b in pairs)


@pytest.mark.parametrize("k", [1, 2])
def test_exhaustive_privacy_string_unit(k):
    """All 2^(m n) databases (m = 2, n = 3), every release enumerated: the worst ratio between databases that
    differ in one whole string is e^(eps_bit * most bits one string can change) <= e^eps, and reaches e^eps
    (to 1e-9) for some public hash, so a split too generous or too stingy fails."""
    epsilon, m, n = 1.3, 2, 3
    databases = np.array(list(itertools.product((0, 1), repeat=m * n)), np.uint8).reshape(-1, m, n)
    pairs = [(a, b) for a in range(len(databases)) for b in range(len(databases))
             if a != b and (databases[a] != databases[b]).any(1).sum() == 1]
    worst = []
    for seed in range(6):
        index = DPHammingIndex(databases[0], epsilon, k, seed=seed, noise_seed=0)
        table, _ = release_table(index, databases)
        assert np.allclose(table.sum(1), 1)
        ratio = max_ratio(table, pairs)
        buckets = index.sketches[0].buckets
        change = max(sum(a != b for a, b in zip(loop_sketch(u, buckets), loop_sketch(v, buckets)))
                     for u in itertools.product((0, 1), repeat=n) for v in itertools.product((0, 1), repeat=n))
        assert ratio <= math.exp(epsilon) + 1e-12
        assert ratio == pytest.approx(math.exp(index.eps_bit * change), rel=1e-12)
        worst.append(ratio)
    assert max(worst) == pytest.approx(math.exp(epsilon), rel=1e-9)


def test_exhaustive_privacy_bit_unit():
    """Neighbours differ in one position of one string: ratio exactly e^eps (L bits change, eps / L each)."""
    epsilon, m, n = 0.7, 2, 3
    databases = np.array(list(itertools.product((0, 1), repeat=m * n)), np.uint8).reshape(-1, m, n)
    pairs = [(a, b) for a in range(len(databases)) for b in range(len(databases))
             if (databases[a] != databases[b]).sum() == 1]
    index = DPHammingIndex(databases[0], epsilon, 2, seed=0, unit="bit", noise_seed=0)
    assert len(index.sketches[0].widths) == 2
    table, _ = release_table(index, databases)
    assert max_ratio(table, pairs) == pytest.approx(math.exp(epsilon), rel=1e-12)


@pytest.mark.parametrize("m, n", [(2, 1), (1, 2)])
def test_exhaustive_privacy_edit(m, n):
    """Edit index (CGK walk, then the sketch; up to 18 released bits per string): worst ratio over one-string
    changes <= e^eps, and equal to e^(eps_bit * most bits one string can change)."""
    epsilon = 2.0
    databases = np.array(list(itertools.product((0, 1), repeat=m * n)), np.uint8).reshape(-1, m, n)
    pairs = [(a, b) for a in range(len(databases)) for b in range(len(databases))
             if a != b and (databases[a] != databases[b]).any(1).sum() == 1]
    for seed in range(3):
        index = DPEditIndex(databases[0], epsilon, 1, seed=seed, noise_seed=0)
        embed = lambda row: loop_cgk(row.tolist(), index.walks[0])  # noqa: E731
        table, _ = release_table(index, databases, embed=embed)
        buckets = index.sketches[0].buckets
        change = max(sum(a != b for a, b in zip(loop_sketch(embed(np.array(u)), buckets),
                                                loop_sketch(embed(np.array(v)), buckets)))
                     for u in itertools.product((0, 1), repeat=n) for v in itertools.product((0, 1), repeat=n))
        assert max_ratio(table, pairs) <= math.exp(epsilon) + 1e-12
        assert max_ratio(table, pairs) == pytest.approx(math.exp(index.eps_bit * change), rel=1e-12)


def test_releases_follow_exact_distribution():
    """The implementation's actual releases (many noise seeds) match the enumerated distribution (chi-square)."""
    db = np.array([[1, 0, 1], [0, 0, 1]], np.uint8)
    index = DPHammingIndex(db, 1.0, 2, seed=0, noise_seed=0)
    table, outcomes = release_table(index, db[None])
    codes = {tuple(o): i for i, o in enumerate(outcomes)}
    counts = np.zeros(len(outcomes))
    for noise in range(2500):
        counts[codes[tuple(released_bits(DPHammingIndex(db, 1.0, 2, seed=0, noise_seed=noise)).ravel())]] += 1
    expected = table[0] * counts.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-4


# -- estimates -----------------------------------------------------------------------------------
def near(b: np.ndarray, distances, rng: np.random.Generator) -> np.ndarray:
    out = np.repeat(b[None], len(distances), 0)
    for row, d in zip(out, distances):
        row[rng.choice(len(b), d, replace=False)] ^= 1
    return out


def test_debiased_counts_unbiased():
    """Mean of (Y_j - p u_j) / (1 - 2p) over 3000 noisy copies of each string equals the noiseless odd-bucket
    count within 5 sigma (the noise of each copy is independent)."""
    rng = np.random.default_rng(5)
    b = rng.integers(0, 2, 96).astype(np.uint8)
    strings = near(b, [3, 12, 40], rng)
    x = np.repeat(strings, 3000, 0)
    exact = DPHammingIndex(strings, 1e6, 16, seed=1, noise_seed=0).debiased_counts(b)[0]
    index = DPHammingIndex(x, 40.0, 16, seed=1, noise_seed=2)
    mean = index.debiased_counts(b)[0].reshape(3, 3000, -1).mean(1)
    used = np.array([len(u) for u in index.sketches[0].used])
    sigma = np.sqrt(used * index.p * (1 - index.p)) / (1 - 2 * index.p) / math.sqrt(3000)
    assert 0.2 < index.p < 0.45 and exact.max() >= 25
    assert (np.abs(mean - exact) <= 5 * sigma).all(), (mean, exact)


def test_estimates_unbiased_over_hashes():
    """Without noise the collision inversion is nearly unbiased: mean over 200 hashes within 4 sigma + 0.3."""
    rng = np.random.default_rng(6)
    b = rng.integers(0, 2, 128).astype(np.uint8)
    distances = np.array([0, 1, 3, 6, 10, 16])
    x = near(b, distances, rng)
    est = np.stack([DPHammingIndex(x, 1e6, 16, seed=s, noise_seed=0).query(b) for s in range(200)])
    sigma = est.std(0) / math.sqrt(len(est))
    assert (np.abs(est.mean(0) - distances) <= 4 * sigma + 0.3).all(), est.mean(0)
    assert est[:, 0].max() == 0


def test_error_shrinks_with_epsilon():
    rng = np.random.default_rng(7)
    b = rng.integers(0, 2, 200).astype(np.uint8)
    distances = rng.integers(0, 17, 500)
    x = near(b, distances, rng)
    mae = [np.abs(DPHammingIndex(x, eps, 16, seed=0, unit="bit", noise_seed=1).query(b) - distances).mean()
           for eps in (0.5, 4.0, 32.0)]
    assert mae[0] > mae[1] > mae[2] and mae[2] < 2.0 and mae[0] > 4.0, mae


def test_edit_index_queries():
    rng = np.random.default_rng(8)
    b = rng.integers(0, 2, 60).astype(np.uint8)
    x = near(b, [0, 1, 2, 3] * 10, rng)
    index = DPEditIndex(x, 1e6, 3, seed=0, noise_seed=0, walks=3)
    walks_hd = np.stack([(cgk_embed(x, w) != cgk_embed(b[None], w)).sum(1) for w in index.walks])
    est = index.query(b)
    assert est.shape == (40,) and (est[np.median(walks_hd, 0) == 0] == 0).all()
    assert np.corrcoef(est, np.median(walks_hd, 0))[0, 1] > 0.9


# -- the released structure on disk --------------------------------------------------------------
def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(9)
    x = random_db(rng, 50, 40)
    for index in (DPHammingIndex(x, 3.0, 5, seed=2), DPEditIndex(x, 3.0, 2, seed=2, walks=2)):
        path = index.save(tmp_path / f"{index.kind}.npz")
        loaded = load(path)
        assert type(loaded) is type(index) and loaded.p == index.p and loaded.eps_bit == index.eps_bit
        for b in x[:3]:
            assert np.array_equal(loaded.query(b), index.query(b))
        with np.load(path, allow_pickle=False) as f:
            assert not any(f[key].shape == x.shape for key in f.files)  # no raw database
            assert {k for k in f.files if not k[-1].isdigit()} <= {
                "format", "kind", "n", "k", "epsilon", "unit", "seed", "sketches", "walks"}


def test_noise_not_reproducible_from_public_seed():
    x = random_db(np.random.default_rng(10), 100, 64)
    first, second = DPHammingIndex(x, 2.0, 8, seed=0), DPHammingIndex(x, 2.0, 8, seed=0)
    assert np.array_equal(first.sketches[0].buckets, second.sketches[0].buckets)
    assert not np.array_equal(first.released[0], second.released[0])
    assert np.array_equal(DPHammingIndex(x, 2.0, 8, seed=0, noise_seed=3).released[0],
                          DPHammingIndex(x, 2.0, 8, seed=0, noise_seed=3).released[0])


def test_load_rejects_other_files(tmp_path):
    text, npy, npz = tmp_path / "a.npz", tmp_path / "b.npy", tmp_path / "c.npz"
    text.write_text("0101\n")
    np.save(npy, np.zeros(3))
    np.savez(npz, format=np.array("something else"), kind=np.array("hamming"))
    for path in (text, npy, npz):
        with pytest.raises(MalformedDataError, match=f"{path}: not a DP string index"):
            load(path)
    with pytest.raises(MissingDataError, match="no such file"):
        load(tmp_path / "missing.npz")


def test_read_strings(tmp_path):
    path = tmp_path / "db.txt"
    path.write_text("0101\n\n1100\n")
    assert read_strings(path).tolist() == [[0, 1, 0, 1], [1, 1, 0, 0]]
    path.write_text("0101\n110\n")
    with pytest.raises(MalformedDataError, match=f"{path}: string 2 has length 3"):
        read_strings(path)


# -- the command line ----------------------------------------------------------------------------
def cli(capsys, *args: str) -> tuple[int, str, str]:
    from zoo.core.cli import main

    try:
        main(["dp-strings", *args])
        code = 0
    except SystemExit as err:
        code = err.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_build_query(tmp_path, capsys):
    rng = np.random.default_rng(11)
    x = random_db(rng, 30, 50)
    (tmp_path / "db.txt").write_text("\n".join("".join(map(str, r)) for r in x) + "\n")
    (tmp_path / "q.txt").write_text("".join(map(str, x[0])) + "\n" + "".join(map(str, x[1])) + "\n")
    for distance in ("hamming", "edit"):
        index = tmp_path / f"{distance}.npz"
        code, out, _ = cli(capsys, "build", str(tmp_path / "db.txt"), "--out", str(index), "--epsilon", "1e6",
                           "--k", "4", "--distance", distance)
        assert code == 0 and "m = 30 strings of n = 50 bits" in out
        code, out, _ = cli(capsys, "query", str(index), str(tmp_path / "q.txt"))
        rows = [[float(v) for v in line.split(",")] for line in out.strip().splitlines()]
        assert code == 0 and len(rows) == 2 and all(len(r) == 30 for r in rows)
        assert rows[0][0] == 0 and rows[1][1] == 0
    code, _, _ = cli(capsys, "query", str(tmp_path / "hamming.npz"), str(tmp_path / "q.txt"), "--out",
                     str(tmp_path / "out.csv"))
    assert code == 0 and len((tmp_path / "out.csv").read_text().splitlines()) == 2


@pytest.mark.parametrize("content, extra, words", [
    ("0101\n01x1\n", [], "string 2 has characters ['x'], expected only 0 and 1"),
    ("0101\n011\n", [], "string 2 has length 3, expected 4"),
    ("0101\n0111\n", ["--epsilon", "0"], "epsilon must be a finite number > 0, got 0.0"),
    ("0101\n0111\n", ["--k", "9"], "k must be an integer in [1, n = 4], got 9"),
])
def test_cli_errors(tmp_path, capsys, content, extra, words):
    (tmp_path / "db.txt").write_text(content)
    args = ["build", str(tmp_path / "db.txt"), "--out", str(tmp_path / "i.npz"), "--epsilon", "1", "--k", "2", *extra]
    code, out, err = cli(capsys, *args)
    assert code == 2 and err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "query", str(tmp_path / "db.txt"), str(tmp_path / "db.txt"))
    assert code == 2 and "not a DP string index" in err and len(err.strip().splitlines()) == 1


def _one_error_line(code: int, err: str, *words: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(w in lines[0] for w in words), (lines[0], words)
    return lines[0]


@pytest.fixture
def built(tmp_path, capsys):
    """A database, queries and a small index built by the CLI: ``(folder, index path)``."""
    x = random_db(np.random.default_rng(12), 8, 16)
    (tmp_path / "db.txt").write_text("\n".join("".join(map(str, r)) for r in x) + "\n")
    (tmp_path / "q.txt").write_text("".join(map(str, x[0])) + "\n")
    for kind in ("hamming", "edit"):
        code, _, err = cli(capsys, "build", str(tmp_path / "db.txt"), "--out", str(tmp_path / f"{kind}.npz"),
                           "--epsilon", "2", "--k", "3", "--distance", kind)
        assert code == 0, err
    return tmp_path


def _rewrite(path, **fields) -> None:
    """Hand-edit an index: replace (or with None, drop) fields, saved like `build` saves."""
    with np.load(path, allow_pickle=False) as f:
        state = {k: f[k] for k in f.files}
    for key, value in fields.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    np.savez_compressed(path, **state)


@pytest.mark.parametrize("kind, fields, words", [
    ("hamming", {"epsilon": np.array(np.nan)}, "field 'epsilon' must be a finite number > 0, got nan"),
    ("hamming", {"epsilon": np.array(np.inf)}, "field 'epsilon' must be a finite number > 0, got inf"),
    ("hamming", {"epsilon": np.array(-1.0)}, "field 'epsilon' must be a finite number > 0, got -1.0"),
    ("hamming", {"epsilon": np.array(0.0)}, "field 'epsilon' must be a finite number > 0, got 0.0"),
    ("hamming", {"epsilon": np.array(1e-300)}, "epsilon = 1e-300 is too small"),
    ("hamming", {"epsilon": np.array("2")}, "field 'epsilon' must be a single float, got <U1"),
    ("hamming", {"k": np.array(0)}, "field 'k' must be an integer in [1, n = 16], got 0"),
    ("hamming", {"k": np.array(17)}, "field 'k' must be an integer in [1, n = 16], got 17"),
    ("hamming", {"k": np.array(2.5)}, "field 'k' must be a single int, got float64"),
    ("hamming", {"k": np.array(8)}, "field 'buckets0' must be integer hashes of shape [4, 16], got int64 array of shape [3, 16]"),
    ("hamming", {"n": np.array(15)}, "of shape [3, 15], got int64 array of shape [3, 16]"),
    ("hamming", {"n": np.array(-4)}, "field 'n' (string length) must be >= 1, got -4"),
    ("hamming", {"n": None}, "field 'n' is missing"),
    ("hamming", {"sketches": np.array(2)}, "field 'sketches' must count the buckets/released arrays"),
    ("hamming", {"sketches": np.array(0)}, "field 'sketches' must count"),
    ("hamming", {"unit": np.array("byte")}, "field 'unit' must be one of ('string', 'bit'), got 'byte'"),
    ("hamming", {"buckets0": np.full((3, 16), 99)}, "field 'buckets0' level 0 must hold buckets in [0, 4), got 99..99"),
    ("hamming", {"released0": np.zeros((8, 1), np.uint8)}, "field 'released0' must be packed sketch bits of shape [any, 3]"),
    ("hamming", {"released0": np.zeros((0, 3), np.uint8)}, "field 'released0' must be a non-empty uint8 array"),
    ("hamming", {"released0": np.full((8, 3), 255, np.uint8)}, "field 'released0' has bits set in its byte padding"),
    ("edit", {"walks": np.full((1, 48, 2), 2, np.uint8)}, "field 'walks' must hold only 0 and 1"),
    ("edit", {"walks": np.zeros((1, 47, 2), np.uint8)}, "field 'walks' must be CGK walk bits of shape [1, 48, 2]"),
    ("edit", {"released0": np.zeros((8, 21), np.uint8)}, "must be packed sketch bits of shape [any, 22]"),
    ("edit", {"sketches": np.array(2)}, "field 'sketches' must count the buckets/released arrays (>= 1; the file holds 1)"),
])
def test_hand_edited_index_is_one_error_line(built, capsys, kind, fields, words):
    """A hand-edited index once gave NaN estimates; now `query` names the file and the bad field."""
    index = built / f"{kind}.npz"
    _rewrite(index, **fields)
    code, out, err = cli(capsys, "query", str(index), str(built / "q.txt"))
    _one_error_line(code, err, f"{index}: ", words)
    assert out == ""


def test_index_with_object_arrays_is_one_error_line(built, capsys):
    index = built / "hamming.npz"
    with np.load(index, allow_pickle=False) as f:
        state = {k: f[k] for k in f.files}
    np.savez(index, **{**state, "released0": np.array([b"x", 3], dtype=object)})  # pickled inside the .npy
    code, _, err = cli(capsys, "query", str(index), str(built / "q.txt"))
    _one_error_line(code, err, f"{index}: not a DP string index", "Object arrays cannot be loaded")


def test_crc_corrupt_and_truncated_indexes_are_one_error_line(built, capsys):
    index = built / "hamming.npz"
    with np.load(index, allow_pickle=False) as f:
        state = {k: f[k] for k in f.files}
    np.savez(index, **state)  # stored, not deflated: the array bytes lie in the file as they are
    raw = bytearray(index.read_bytes())
    at = raw.index(state["buckets0"].tobytes()[:64]) + 10
    raw[at] ^= 0xFF
    index.write_bytes(bytes(raw))
    code, _, err = cli(capsys, "query", str(index), str(built / "q.txt"))
    _one_error_line(code, err, f"{index}: not a DP string index", "BadZipFile", "CRC")
    edit = (built / "edit.npz").read_bytes()
    for cut in (len(edit) // 2, len(edit) - 30, 100):
        (built / "cut.npz").write_bytes(edit[:cut])
        code, _, err = cli(capsys, "query", str(built / "cut.npz"), str(built / "q.txt"))
        _one_error_line(code, err, f"{built / 'cut.npz'}: not a DP string index")
    with zipfile.ZipFile(built / "edit.npz") as archive:
        member = max(archive.infolist(), key=lambda info: info.compress_size)
    name_length, extra_length = struct.unpack("<HH", edit[member.header_offset + 26:member.header_offset + 30])
    start = member.header_offset + 30 + name_length + extra_length
    deflated = bytearray(edit)
    deflated[start + member.compress_size // 2] ^= 0x55  # inside a deflate stream: zlib.error or a CRC mismatch
    (built / "flip.npz").write_bytes(bytes(deflated))
    code, _, err = cli(capsys, "query", str(built / "flip.npz"), str(built / "q.txt"))
    _one_error_line(code, err, f"{built / 'flip.npz'}: ")


def test_unwritable_out_is_one_error_line_for_build_and_query(built, capsys):
    blocker = built / "a_file"
    blocker.write_text("not a folder\n")
    for out in (blocker / "i.npz", built):  # under a regular file; an existing folder
        code, _, err = cli(capsys, "build", str(built / "db.txt"), "--out", str(out), "--epsilon", "1", "--k", "2")
        _one_error_line(code, err, f"cannot write the index to {out}")
        code, out_text, err = cli(capsys, "query", str(built / "hamming.npz"), str(built / "q.txt"), "--out", str(out))
        _one_error_line(code, err, f"--out {out}: cannot write the estimates")
    assert sorted(p.name for p in built.iterdir()) == ["a_file", "db.txt", "edit.npz", "hamming.npz", "q.txt"]


def test_queries_of_another_length_name_both_files(built, capsys):
    (built / "q5.txt").write_text("01010\n")
    code, _, err = cli(capsys, "query", str(built / "hamming.npz"), str(built / "q5.txt"))
    _one_error_line(code, err, f"{built / 'q5.txt'}: queries have length 5, but {built / 'hamming.npz'} indexes "
                               "strings of length n = 16")


def test_build_replaces_an_index_whole(built, capsys):
    """The index is written to a temporary file and renamed: the old one stays readable until then."""
    index = built / "hamming.npz"
    before = load(index)
    code, _, err = cli(capsys, "build", str(built / "db.txt"), "--out", str(index), "--epsilon", "5", "--k", "2")
    assert code == 0, err
    after = load(index)
    assert (before.epsilon, before.k, after.epsilon, after.k) == (2.0, 3, 5.0, 2)
    assert not [p for p in built.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_run_zoo_error_line(tmp_path):
    (tmp_path / "db.txt").write_text("0101\n0111\n")
    result = run_zoo("dp-strings", "build", str(tmp_path / "db.txt"), "--out", str(tmp_path / "i.npz"),
                     "--epsilon", "-1", "--k", "2")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: epsilon must be a finite number > 0, got -1.0"


@pytest.mark.slow
def test_run_zoo_build_query(tmp_path):
    (tmp_path / "db.txt").write_text("010101\n111000\n000000\n")
    (tmp_path / "q.txt").write_text("010101\n")
    result = run_zoo("dp-strings", "build", str(tmp_path / "db.txt"), "--out", str(tmp_path / "i.npz"),
                     "--epsilon", "1000", "--k", "3", "--unit", "bit")
    assert result.returncode == 0, result.stderr
    result = run_zoo("dp-strings", "query", str(tmp_path / "i.npz"), str(tmp_path / "q.txt"))
    assert result.returncode == 0, result.stderr
    estimates = [float(v) for v in result.stdout.strip().split(",")]
    assert estimates[0] == 0 and len(estimates) == 3
    assert run_zoo("dp-strings", "--help").stdout.count("build") >= 1
