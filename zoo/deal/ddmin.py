"""Delta debugging minimisation (ddmin) of a passing set: the fewest items that keep a test True.

Zeller & Hildebrandt, 2002, "Simplifying and Isolating Failure-Inducing Input" (IEEE TSE 28(2)),
algorithm ddmin, read with "the test still passes" in place of "the failure still occurs". Given
items ``c`` with ``test(c)`` True and a granularity ``n = 2``:

1. split the current set into ``n`` parts of nearly equal size (order kept);
2. if some part passes, continue with that part and ``n = 2``  ("reduce to subset");
3. else if some complement (current minus one part) passes, continue with it and
   ``n = max(n - 1, 2)``  ("reduce to complement");
4. else if ``n < |current|``, set ``n = min(2n, |current|)`` ("increase granularity");
5. else stop: with ``n = |current|`` every single-item removal was tested and failed.

The result is 1-minimal: removing any one item makes the test fail (for a one-item result the
empty set is tested too). Outcomes are memoised by subset, so no subset is tested twice; the number
of tests is ``O(|c|^2)`` at worst and ``O(k log |c|)`` for a monotone test whose minimal passing
set has ``k`` items, far below the ``2^|c|`` of exhaustive search.

In decoupled alignment (Luo et al., 2024, DeAl / DAPA) the items are transplant sites (e.g. MLP
layers) and the test asks whether the student with those sites copied from the aligned teacher
still refuses harmful prompts; ddmin finds a small set of layers that carries the alignment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from zoo.core.errors import ConfigError


@dataclass
class DDMinResult:
    """``minimal``: the items kept, in input order; ``tests``: oracle calls made (cache hits not
    counted); ``history``: ``(subset, outcome)`` per oracle call, in call order; ``complete``: False
    when ``max_tests`` stopped the search early (``minimal`` then passes but may not be 1-minimal)."""

    minimal: list
    tests: int
    history: list[tuple[list, bool]] = field(default_factory=list)
    complete: bool = True


class _Budget(Exception):
    pass


def _split(indices: Sequence[int], parts: int) -> list[list[int]]:
    """``indices`` in ``parts`` contiguous chunks whose sizes differ by at most one."""
    size, extra = divmod(len(indices), parts)
    chunks, start = [], 0
    for i in range(parts):
        stop = start + size + (i < extra)
        chunks.append(list(indices[start:stop]))
        start = stop
    return chunks


def ddmin(items: Iterable[Any], test: Callable[[list], bool], *, max_tests: int | None = None) -> DDMinResult:
    """A 1-minimal sublist of ``items`` (order kept) for which ``test`` is True (see the module doc).

    ``test(items)`` must be True, else :class:`ConfigError`. ``max_tests`` caps the oracle calls
    (the precondition included); when reached, the smallest passing subset so far is returned with
    ``complete=False``."""
    items = list(items)
    if max_tests is not None and (isinstance(max_tests, bool) or not isinstance(max_tests, int) or max_tests < 1):
        raise ConfigError(f"max_tests must be a positive integer or None, got {max_tests!r}")
    cache: dict[tuple[int, ...], bool] = {}
    history: list[tuple[list, bool]] = []

    def run(indices: Sequence[int]) -> bool:
        key = tuple(sorted(indices))
        if key in cache:
            return cache[key]
        if max_tests is not None and len(history) >= max_tests:
            raise _Budget
        subset = [items[i] for i in key]
        outcome = bool(test(list(subset)))
        cache[key] = outcome
        history.append((subset, outcome))
        return outcome

    if not run(range(len(items))):
        raise ConfigError(f"ddmin needs test(items) to be True for all {len(items)} items; it is False, so there "
                          f"is no passing set to minimise")
    current = list(range(len(items)))
    parts = 2
    try:
        while len(current) >= 2:
            chunks = _split(current, parts)
            reduced = False
            for chunk in chunks:
                if run(chunk):
                    current, parts, reduced = chunk, 2, True
                    break
            if not reduced:
                for chunk in chunks:
                    removed = set(chunk)
                    complement = [i for i in current if i not in removed]
                    if run(complement):
                        current, parts, reduced = complement, max(parts - 1, 2), True
                        break
            if not reduced:
                if parts >= len(current):
                    break
                parts = min(2 * parts, len(current))
        if len(current) == 1 and run([]):
            current = []
    except _Budget:
        return DDMinResult([items[i] for i in current], len(history), history, complete=False)
    return DDMinResult([items[i] for i in current], len(history), history)


__all__ = ["DDMinResult", "ddmin"]
