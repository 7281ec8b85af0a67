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

import math
import zipfile
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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez_compressed(f, **self.state())
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


def load(path: str | Path) -> DPIndex:
    """A structure written by :meth:`DPIndex.save`; anything else raises MalformedDataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{path}: no such file (expected a DP string index written by `dp-strings build`)")
    expected = f"{path}: not a DP string index (expected an .npz written by `dp-strings build`, format {FORMAT})"
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise MalformedDataError(expected) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise MalformedDataError(expected)
    with archive:
        state = {key: archive[key] for key in archive.files}
    tags = str(state.get("format", "")), str(state.get("kind")), str(state.get("unit"))
    if tags[0] != FORMAT or tags[1] not in KINDS or tags[2] not in UNITS:
        raise MalformedDataError(expected)
    try:
        cls = {c.kind: c for c in (DPHammingIndex, DPEditIndex)}[tags[1]]
        index = cls.__new__(cls)
        index.n, index.k, index.epsilon = int(state["n"]), int(state["k"]), float(state["epsilon"])
        index.unit, index.seed = str(state["unit"]), int(state["seed"])
        count = int(state["sketches"])
        widths = levels(index.sketch_bound())
        index.sketches = [Sketch(state[f"buckets{i}"], widths) for i in range(count)]
        index.released = [state[f"released{i}"] for i in range(count)]
        index._restore(state)
    except (KeyError, ValueError, TypeError, IndexError) as err:
        raise MalformedDataError(f"{expected}: {err}") from err
    index._set_noise()
    return index


__all__ = ["DPEditIndex", "DPHammingIndex", "DPIndex", "Sketch", "cgk_embed", "flip_prob", "hamming", "load",
           "read_strings"]
