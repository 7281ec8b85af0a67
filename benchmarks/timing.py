"""Timing shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, which puts this
folder on ``sys.path``)."""

from __future__ import annotations

import time
from collections.abc import Callable


def rounds(call: Callable[[], object], repeats: int, budget: float) -> list[float]:
    """Seconds per call in each of ``repeats`` rounds; one warm-up call sets how many calls a round
    makes so that it lasts about ``budget`` seconds."""
    start = time.perf_counter()
    call()
    iters = max(1, int(budget / max(time.perf_counter() - start, 1e-6)))
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            call()
        out.append((time.perf_counter() - start) / iters)
    return out
