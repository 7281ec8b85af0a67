"""Differentially private Hamming and edit distances to a database of bit strings.

Hu, Liu, Liu, Song, Zhang, "On Differentially Private String Distances" (arXiv 2411.05750, 2024).
A database ``A_1..A_m`` in ``{0,1}^n`` is sketched once, every sketch bit goes through randomized
response (a bit flip, Warner 1965), and only the flipped sketches are released. A query ``B``
is sketched without noise and compared with every released sketch, so any number of queries costs
no further privacy (post-processing). The paper's guarantees, for queries within distance ``k`` of
every string (the paper's abstract): Hamming error O~(k / e^(eps / log k)) in O~(mk + n) time, edit
error O~(k / e^(eps / (log k log n))) in O~(mk^2 + n) time.

The paper's exact sketch is not reproduced here (only its abstract was at hand); this module builds
a sound one of the same kind (randomized response on ~log k levels of hashed sketches) and
documents every choice.

**Sketch** (:class:`Sketch`). ``L = ceil(log2 k) + 1`` levels; level ``j`` has ``w_j = 2^(j+2)``
buckets (the top one ``>= 4k``) and a public uniform hash ``h_j: [n] -> [w_j]``. Sketch bit
``(j, b)`` of ``x`` is the parity ``XOR_{i: h_j(i) = b} x_i``. Buckets that no position hashes to
are constant (always 0) and are not released. ``B`` = the number of released (non-empty) buckets.

**Randomized response.** Each released bit is flipped independently with probability
``p = 1 / (1 + e^eps_bit)`` (:func:`flip_prob`): an eps_bit-DP release of that bit.

**Privacy unit and budget split.** ``unit="string"`` (the default): neighbouring databases differ
in ONE of the m strings, which may change arbitrarily (all n bits). Only that string's B released
bits depend on it, so by basic composition ``eps_bit = eps / B`` gives eps-DP (tight when some
change of the string flips every non-empty bucket's parity). ``unit="bit"``, the paper's
sensitivity (one position of one string changes): that position lies in exactly one bucket per
level, so exactly L released bits change and ``eps_bit = eps / L`` gives eps-DP, always tight;
this is the split behind the paper's k / e^(eps / log k). For edit distance a one-position change
can move the whole CGK walk, so both units use ``eps / B`` there.

**Debiasing.** For a query ``B`` let ``Y_j`` be the number of released level-j buckets (``u_j`` of
them) where ``B``'s parity differs from the released one. With ``O_j`` the number where the true
parities differ, ``E[Y_j] = p u_j + (1 - 2p) O_j``, so ``O^_j = (Y_j - p u_j) / (1 - 2p)`` is an unbiased
estimate of ``O_j`` (over the noise). Over the hash, ``d`` differing positions leave
``E[O_j] = (w_j / 2) (1 - (1 - 2/w_j)^d)`` buckets odd; inverting gives
``d^_j = ln(1 - 2 O^_j / w_j) / ln(1 - 2 / w_j)`` (a moment estimate, unbiased up to the
curvature of the logarithm). The estimate is ``d^_j`` of the smallest level with
``w_j >= 8 d^_top`` (few collisions, and fewer noisy bits than the top level for small
distances), chosen by the top level's estimate so that no level selects itself; clipped to [0, n].

**Edit distance** (:class:`DPEditIndex`): each string is first embedded into ``{0,1}^(3n)`` by the
CGK random walk (Chakraborty, Goldenberg, Koucky, STOC 2016), which the paper's reduction uses:
with public random bits ``r_t(c)``, output position ``t`` copies ``x[i]`` (0 once the walk has run
off the end) and advances ``i`` by ``r_t(x[i])``. CGK prove ``ED/2 <= HD(f(x), f(y))`` always and
``HD <= O(ED^2)`` with probability >= 2/3, so the Hamming sketch is sized for ``8 k^2`` (``CGK_SCALE``;
on random strings the CGK distance is ~10 ED in the median, docs/dp_strings) and the
returned estimate is the estimated Hamming distance of the embeddings (the "CGK distance"),
median over ``walks`` independent walks; ``docs/dp_strings`` measures its distortion.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zoo.core.errors import ConfigError, MalformedDataError, MissingDataError

FORMAT = "zoo.dp_strings/1"
UNITS = ("string", "bit")
KINDS = ("hamming", "edit")
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.int64)  # set bits of each byte
CGK_SCALE = 8  # the edit index's Hamming sketch is sized for CGK distances up to CGK_SCALE * k^2


# -- input -----------------------------------------------------------------------------------------
def as_bits(strings: Sequence[str] | np.ndarray, what: str = "database") -> np.ndarray:
    """``m`` strings of '0'/'1' (or a 0/1 array ``[m, n]``) as a ``uint8`` array ``[m, n]``."""
    if isinstance(strings, str):
        raise MalformedDataError(f"{what}: expected a list of bit strings, got one string {strings[:20]!r}")
    if isinstance(strings, np.ndarray):
        bits = strings
        if bits.ndim != 2 or bits.shape[0] == 0 or bits.shape[1] == 0:
            raise MalformedDataError(f"{what}: expected a non-empty 0/1 array [m, n], got shape {bits.shape}")
        if not np.isin(bits, (0, 1)).all():
            raise MalformedDataError(f"{what}: expected only 0/1 values, got {np.unique(bits)[:5].tolist()}")
        return bits.astype(np.uint8)
    strings = list(strings)
    if not strings:
        raise MalformedDataError(f"{what}: expected at least one bit string, got none")
    n = len(strings[0])
    for i, s in enumerate(strings):
        if len(s) != n:
            raise MalformedDataError(f"{what}: string {i + 1} has length {len(s)}, expected {n} like string 1")
        bad = set(s) - {"0", "1"}
        if bad:
            raise MalformedDataError(f"{what}: string {i + 1} has characters {sorted(bad)}, expected only 0 and 1")
    if n == 0:
        raise MalformedDataError(f"{what}: strings are empty, expected length >= 1")
    return (np.frombuffer("".join(strings).encode(), np.uint8) - ord("0")).reshape(len(strings), n)


def read_strings(path: str | Path) -> np.ndarray:
    """A text file of 0/1 strings, one per line (blank lines ignored), as ``uint8 [m, n]``."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{path}: no such file (expected a text file of 0/1 strings, one per line)")
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except UnicodeDecodeError as err:
        raise MalformedDataError(f"{path}: not a text file of 0/1 strings ({err.reason})") from err
    except OSError as err:
        raise MalformedDataError(f"{path}: cannot read ({err.strerror or err})") from err
    return as_bits([line for line in lines if line], what=str(path))


def hamming(database: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact Hamming distances of ``b [n]`` to every row of ``database [m, n]``."""
    return (database != b).sum(1)


# -- the sketch and randomized response ------------------------------------------------------------
def levels(k: int) -> list[int]:
    """Bucket counts ``w_j = 2^(j+2)``, ``j <= ceil(log2 k)``: the top level has >= 4k buckets."""
    return [2 ** (j + 2) for j in range(math.ceil(math.log2(k)) + 1)]


def flip_prob(eps_bit: float) -> float:
    """Randomized response: flip with probability ``1 / (1 + e^eps_bit)``, an eps_bit-DP bit."""
    return math.exp(-eps_bit) / (1.0 + math.exp(-eps_bit))


class Sketch:
    """Bucket-parity sketch of strings in ``{0,1}^n`` (module docstring): public hashes ``buckets
    [L, n]``; the released bits are the non-empty buckets, level by level, each level padded to
    whole bytes so queries can XOR packed bytes."""

    def __init__(self, buckets: np.ndarray, widths: Sequence[int]) -> None:
        self.buckets, self.widths = buckets.astype(np.int64), list(widths)
        self.used = [np.unique(row) for row in self.buckets]  # non-empty buckets of each level
        self.bits = sum(len(u) for u in self.used)  # B
        self.bytes = [-(-len(u) // 8) for u in self.used]
        self.offsets = np.cumsum([0, *self.bytes[:-1]])
        cols = np.zeros((self.buckets.shape[1], sum(8 * b for b in self.bytes)), np.float32)
        for j, (row, used) in enumerate(zip(self.buckets, self.used)):
            cols[np.arange(len(row)), 8 * self.offsets[j] + np.searchsorted(used, row)] = 1
        self.matrix = cols  # position -> padded released-bit column

    @classmethod
    def random(cls, n: int, k: int, rng: np.random.Generator) -> Sketch:
        widths = levels(k)
        return cls(np.stack([rng.integers(0, w, n) for w in widths]), widths)

    def parities(self, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Padded sketch bits ``uint8 [m, 8 * bytes]`` of ``x [m, n]`` (0 in the padding)."""
        out = np.empty((len(x), self.matrix.shape[1]), np.uint8)
        for start in range(0, len(x), chunk):
            counts = x[start:start + chunk].astype(np.float32) @ self.matrix
            out[start:start + chunk] = counts.astype(np.int64) & 1
        return out

    def mask(self) -> np.ndarray:
        """1 at released bits, 0 at padding, ``uint8 [8 * bytes]``."""
        mask = np.zeros(self.matrix.shape[1], np.uint8)
        for j, used in enumerate(self.used):
            mask[8 * self.offsets[j]:8 * self.offsets[j] + len(used)] = 1
        return mask

    def odd_counts(self, packed: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Buckets per level where the packed sketches ``[m, bytes]`` and the query's differ: ``[m, L]``."""
        diff = POPCOUNT[packed ^ np.packbits(self.parities(query[None]), axis=1)]
        return np.add.reduceat(diff, self.offsets, axis=1)


def cgk_embed(x: np.ndarray, walk: np.ndarray) -> np.ndarray:
    """CGK embedding ``[m, n] -> [m, 3n]`` with public random bits ``walk [3n, 2]`` (module
    docstring), vectorized over the m strings (a plain loop for one string, e.g. a query)."""
    m, n = x.shape
    if m == 1:
        row, steps, out, i = x[0].tolist(), walk.tolist(), [], 0
        for step in steps:
            c = row[i] if i < n else 0
            out.append(c)
            i += step[c] if i < n else 0
        return np.array([out], np.uint8)
    out = np.zeros((m, len(walk)), np.uint8)
    i, rows = np.zeros(m, np.int64), np.arange(m)
    padded = np.concatenate([x, np.zeros((m, 1), np.uint8)], 1)  # column n: off the end
    for t, step in enumerate(walk):
        c = padded[rows, i]
        out[:, t] = c
        i = np.minimum(i + np.where(i < n, step[c], 0), n)
    return out


# -- the released data structure -------------------------------------------------------------------
class DPIndex(ABC):
    """Shared machinery of :class:`DPHammingIndex` and :class:`DPEditIndex` (module docstring).

    Args:
        database: m strings of '0'/'1' of one length n, or a 0/1 array ``[m, n]``.
        epsilon: the privacy budget (> 0) per privacy unit.
        k: the distance bound the sketch is sized for, ``1 <= k <= n``.
        seed: seeds the public hashes (and CGK walks); released with the structure.
        unit: "string" (one string changes arbitrarily) or "bit" (one position changes).
        noise_seed: seeds the randomized response. Leave it None (fresh OS entropy) for a real
            release: whoever knows it can undo the noise. Tests set it.
    """

    kind = ""

    def __init__(self, database: Sequence[str] | np.ndarray, epsilon: float, k: int, seed: int = 0,
                 unit: str = "string", noise_seed: int | None = None) -> None:
        x = as_bits(database)
        n = x.shape[1]
        if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
            raise ConfigError(f"epsilon must be a finite number > 0, got {epsilon!r}")
        if not (isinstance(k, (int, np.integer)) and 1 <= k <= n):
            raise ConfigError(f"k must be an integer in [1, n = {n}], got {k!r}")
        if unit not in UNITS:
            raise ConfigError(f"unit must be one of {UNITS}, got {unit!r}")
        self.n, self.k, self.epsilon, self.unit, self.seed = n, int(k), float(epsilon), unit, int(seed)
        self._make_public(np.random.default_rng(seed))
        self._set_noise()
        rng = np.random.default_rng(noise_seed)
        self.released = [self._release(s, e, rng) for s, e in zip(self.sketches, self._embed(x))]

    def _release(self, sketch: Sketch, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Randomized response on the released bits, then packed: ``uint8 [m, bytes]``."""
        bits = sketch.parities(x)
        flips = (rng.random(bits.shape) < self.p).astype(np.uint8) * sketch.mask()
        return np.packbits(bits ^ flips, axis=1)

    @abstractmethod
    def _make_public(self, rng: np.random.Generator) -> None:
        """Draw the public randomness (hashes, walks) and set ``self.sketches``."""

    @abstractmethod
    def sketch_bound(self) -> int:
        """The largest distance each sketch is sized for (its levels: ``levels(sketch_bound())``)."""

    def _restore(self, state: dict[str, np.ndarray]) -> None:  # noqa: B027 (an optional hook)
        """Set what a subclass keeps beyond the sketches from a saved ``state`` (:func:`load`)."""

    def _set_noise(self) -> None:
        """The per-bit budget ``eps_bit = eps / sensitivity`` and flip probability ``p``, once the
        public randomness is set (at construction and in :func:`load`)."""
        self.eps_bit = self.epsilon / self.sensitivity()
        self.p = flip_prob(self.eps_bit)
        if not (math.isfinite(self.p) and 1 - 2 * self.p > 0):
            raise ConfigError(f"epsilon = {self.epsilon!r} is too small: its per-bit budget {self.eps_bit:.3g} "
                              f"(over {self.sensitivity()} bits) flips each bit with probability 1/2, which "
                              "no estimate can undo")

    @abstractmethod
    def _embed(self, x: np.ndarray) -> list[np.ndarray]:
        """The strings as the sketches read them, one array per sketch."""

    def sensitivity(self) -> int:
        """Released bits one privacy unit can change (module docstring): eps_bit = eps / this."""
        return sum(s.bits for s in self.sketches)

    @property
    def m(self) -> int:
        return len(self.released[0])

    def _check_query(self, b: str | np.ndarray) -> np.ndarray:
        bits = as_bits([b] if isinstance(b, str) else np.asarray(b)[None], what="query")[0]
        if len(bits) != self.n:
            raise MalformedDataError(f"query has length {len(bits)}, expected n = {self.n}")
        return bits

    def debiased_counts(self, b: str | np.ndarray) -> list[np.ndarray]:
        """``O^_j = (Y_j - p u_j) / (1 - 2p)`` per sketch: unbiased estimates ``[m, L]`` of the numbers of
        buckets where the true parities of each string and the query differ (module docstring)."""
        out = []
        for sketch, packed, e in zip(self.sketches, self.released, self._embed(self._check_query(b)[None])):
            used = np.array([len(u) for u in sketch.used])
            out.append((sketch.odd_counts(packed, e[0]) - self.p * used) / (1 - 2 * self.p))
        return out

    def _distance(self, sketch: Sketch, counts: np.ndarray) -> np.ndarray:
        """Invert ``E[O_j] = (w_j / 2)(1 - (1 - 2/w_j)^d)`` per level, then keep the smallest level with
        ``w_j >= 8 d^_top`` (the top level's estimate picks it, so no level selects itself)."""
        w = np.array(sketch.widths, np.float64)
        d = np.log(np.maximum(1 - 2 * counts / w, 1 / w)) / np.log(1 - 2 / w)
        level = np.searchsorted(w, 8 * d[:, -1])
        return d[np.arange(len(d)), np.minimum(level, len(w) - 1)]

    def query(self, b: str | np.ndarray) -> np.ndarray:
        """Estimated distances ``float64 [m]`` of the query to every database string; no privacy spent."""
        estimates = [self._distance(s, c) for s, c in zip(self.sketches, self.debiased_counts(b))]
        return np.clip(np.median(np.stack(estimates), axis=0), 0, self._cap())

    def _cap(self) -> float:
        return float(self.n)

    # -- save / load: the released structure only ------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Everything the file holds: public parameters, public hashes, the flipped sketches."""
        state = {"format": np.array(FORMAT), "kind": np.array(self.kind), "n": np.array(self.n),
                 "k": np.array(self.k), "epsilon": np.array(self.epsilon), "unit": np.array(self.unit),
                 "seed": np.array(self.seed), "sketches": np.array(len(self.sketches))}
        for i, (s, packed) in enumerate(zip(self.sketches, self.released)):
            state[f"buckets{i}"], state[f"released{i}"] = s.buckets, packed
        return state

    def save(self, path: str | Path) -> Path:
        """Write the released structure to ``path`` (an ``.npz``): to a temporary file in the same
        folder first, then renamed over ``path``, so a failed write never leaves a partial index.
        A path that cannot be written raises ConfigError naming it."""
        path = Path(path)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("wb") as f:
                np.savez_compressed(f, **self.state())
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except OSError as err:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise ConfigError(f"cannot write the index to {path}: {err.strerror or err}") from err
        return path


class DPHammingIndex(DPIndex):
    """eps-DP Hamming distances (the paper's first result): one :class:`Sketch` of the strings."""

    kind = "hamming"

    def _make_public(self, rng: np.random.Generator) -> None:
        self.sketches = [Sketch.random(self.n, self.sketch_bound(), rng)]

    def sketch_bound(self) -> int:
        return self.k

    def _embed(self, x: np.ndarray) -> list[np.ndarray]:
        return [x]

    def sensitivity(self) -> int:
        return len(self.sketches[0].widths) if self.unit == "bit" else self.sketches[0].bits


class DPEditIndex(DPIndex):
    """eps-DP edit-distance proxies (the paper's second result): ``walks`` CGK embeddings, each with a
    :class:`Sketch` sized for Hamming distance ``CGK_SCALE k^2`` of the embeddings (at most 3n)."""

    kind = "edit"

    def __init__(self, database: Sequence[str] | np.ndarray, epsilon: float, k: int, seed: int = 0,
                 unit: str = "string", noise_seed: int | None = None, walks: int = 1) -> None:
        if not (isinstance(walks, (int, np.integer)) and walks >= 1):
            raise ConfigError(f"walks must be an integer >= 1, got {walks!r}")
        self.walks_n = int(walks)
        super().__init__(database, epsilon, k, seed, unit, noise_seed)

    def _make_public(self, rng: np.random.Generator) -> None:
        self.walks = rng.integers(0, 2, (self.walks_n, 3 * self.n, 2)).astype(np.uint8)
        self.sketches = [Sketch.random(3 * self.n, self.sketch_bound(), rng) for _ in range(self.walks_n)]

    def cgk_bound(self) -> int:
        return min(CGK_SCALE * self.k ** 2, 3 * self.n)

    def sketch_bound(self) -> int:
        return self.cgk_bound()

    def _restore(self, state: dict[str, np.ndarray]) -> None:  # noqa: B027 (an optional hook)
        self.walks = state["walks"]
        self.walks_n = len(self.sketches)

    def _embed(self, x: np.ndarray) -> list[np.ndarray]:
        return [cgk_embed(x, walk) for walk in self.walks]

    def _cap(self) -> float:
        return 3.0 * self.n

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), "walks": self.walks}


# What reading a damaged .npz can raise: a bad or truncated zip (BadZipFile, EOFError, OSError,
# struct.error, KeyError, NotImplementedError for an unknown compression, RuntimeError for an
# "encrypted" member), corrupt deflate data (zlib.error), a bad .npy header or an object array
# refused by allow_pickle=False (ValueError, SyntaxError, TypeError), absurd sizes (MemoryError,
# OverflowError).
_READ_ERRORS = (OSError, EOFError, ValueError, TypeError, LookupError, zipfile.BadZipFile, zlib.error,
                RuntimeError, MemoryError, OverflowError, struct.error, SyntaxError)


def _field(path: Path, state: dict[str, np.ndarray], key: str, kind: str) -> object:
    """The scalar ``state[key]`` as a Python ``str``, ``int`` or ``float`` (``kind``); MalformedDataError
    naming the file, the field and the value otherwise."""
    if key not in state:
        raise MalformedDataError(f"{path}: not a DP string index: field {key!r} is missing")
    value = state[key]
    dtype_kinds = {"str": "U", "int": "iu", "float": "fiu"}[kind]
    if value.shape != () or value.dtype.kind not in dtype_kinds:
        raise MalformedDataError(
            f"{path}: field {key!r} must be a single {kind}, got {value.dtype} array of shape {list(value.shape)}")
    return {"str": str, "int": int, "float": float}[kind](value)


def _array(path: Path, state: dict[str, np.ndarray], key: str, shape: tuple[int, ...], dtype_kinds: str,
           what: str) -> np.ndarray:
    """``state[key]``, checked to have ``shape`` (-1: any size) and a dtype of ``dtype_kinds``."""
    if key not in state:
        raise MalformedDataError(f"{path}: not a DP string index: field {key!r} is missing")
    value = state[key]
    if (value.ndim != len(shape) or any(s != -1 and s != v for s, v in zip(shape, value.shape))
            or value.dtype.kind not in dtype_kinds):
        expected = "[" + ", ".join("any" if s == -1 else str(s) for s in shape) + "]"
        raise MalformedDataError(f"{path}: field {key!r} must be {what} of shape {expected}, "
                                 f"got {value.dtype} array of shape {list(value.shape)}")
    return value


def load(path: str | Path) -> DPIndex:
    """A structure written by :meth:`DPIndex.save`; anything else (another file, a damaged archive, a
    hand-edited field) raises MalformedDataError naming the file and the bad field or value."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{path}: no such file (expected a DP string index written by `dp-strings build`)")
    expected = f"{path}: not a DP string index (expected an .npz written by `dp-strings build`, format {FORMAT})"
    try:
        archive = np.load(path, allow_pickle=False)
        if isinstance(archive, np.lib.npyio.NpzFile):
            with archive:
                state = {key: archive[key] for key in archive.files}
    except _READ_ERRORS as err:
        reason = (str(err).strip().splitlines() or [""])[0][:200] or type(err).__name__
        raise MalformedDataError(f"{expected}: {type(err).__name__}: {reason}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise MalformedDataError(expected)
    tags = [state.get(key) for key in ("format", "kind", "unit")]
    if any(t is None or t.shape != () or t.dtype.kind != "U" for t in tags) or str(tags[0]) != FORMAT:
        raise MalformedDataError(expected)
    kind, unit = str(tags[1]), str(tags[2])
    if kind not in KINDS:
        raise MalformedDataError(f"{path}: field 'kind' must be one of {KINDS}, got {kind!r}")
    if unit not in UNITS:
        raise MalformedDataError(f"{path}: field 'unit' must be one of {UNITS}, got {unit!r}")
    cls = {c.kind: c for c in (DPHammingIndex, DPEditIndex)}[kind]
    index = cls.__new__(cls)
    index.unit = unit
    index.n, index.k = _field(path, state, "n", "int"), _field(path, state, "k", "int")
    index.epsilon, index.seed = _field(path, state, "epsilon", "float"), _field(path, state, "seed", "int")
    count = _field(path, state, "sketches", "int")
    if index.n < 1:
        raise MalformedDataError(f"{path}: field 'n' (string length) must be >= 1, got {index.n}")
    if not 1 <= index.k <= index.n:
        raise MalformedDataError(f"{path}: field 'k' must be an integer in [1, n = {index.n}], got {index.k}")
    if not (math.isfinite(index.epsilon) and index.epsilon > 0):
        raise MalformedDataError(f"{path}: field 'epsilon' must be a finite number > 0, got {index.epsilon!r}")
    if not (count >= 1 and all(f"buckets{i}" in state and f"released{i}" in state for i in range(count))) or (
            kind == "hamming" and count != 1):
        held = sum(1 for key in state if key.startswith("buckets"))
        raise MalformedDataError(f"{path}: field 'sketches' must count the buckets/released arrays "
                                 f"({'1' if kind == 'hamming' else '>= 1'}; the file holds {held}), got {count}")
    width = index.n if kind == "hamming" else 3 * index.n  # positions each sketch hashes
    widths = levels(index.sketch_bound())
    index.sketches, index.released = [], []
    for i in range(count):
        buckets = _array(path, state, f"buckets{i}", (len(widths), width), "iu", "integer hashes")
        high = np.asarray(widths)[:, None]
        if buckets.size and ((buckets < 0) | (buckets >= high)).any():
            level = int(np.nonzero(((buckets < 0) | (buckets >= high)).any(1))[0][0])
            raise MalformedDataError(f"{path}: field 'buckets{i}' level {level} must hold buckets in "
                                     f"[0, {widths[level]}), got {int(buckets[level].min())}..{int(buckets[level].max())}")
        sketch = Sketch(buckets, widths)
        released = _array(path, state, f"released{i}", (-1, sum(sketch.bytes)), "u", "packed sketch bits")
        if released.dtype != np.uint8 or len(released) == 0:
            raise MalformedDataError(f"{path}: field 'released{i}' must be a non-empty uint8 array, "
                                     f"got {released.dtype} with {len(released)} rows")
        if index.released and len(released) != len(index.released[0]):
            raise MalformedDataError(f"{path}: field 'released{i}' has {len(released)} strings, "
                                     f"'released0' {len(index.released[0])}")
        if (np.unpackbits(released, axis=1) & ~sketch.mask().astype(bool)).any():
            raise MalformedDataError(f"{path}: field 'released{i}' has bits set in its byte padding")
        index.sketches.append(sketch)
        index.released.append(released)
    if kind == "edit":
        walks = _array(path, state, "walks", (count, 3 * index.n, 2), "biu", "CGK walk bits")
        if ((walks != 0) & (walks != 1)).any():
            raise MalformedDataError(f"{path}: field 'walks' must hold only 0 and 1")
        index._restore({**state, "walks": walks.astype(np.uint8)})
    try:
        index._set_noise()
    except ConfigError as err:
        raise MalformedDataError(f"{path}: {err}") from err
    return index


__all__ = ["DPEditIndex", "DPHammingIndex", "DPIndex", "Sketch", "cgk_embed", "flip_prob", "hamming", "load",
           "read_strings"]
