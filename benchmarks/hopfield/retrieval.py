"""Hopfield retrieval speed: ``zoo.hopfield.retrieval`` and ``zoo.nn.entmax`` against their bare lower bounds.
float32, CPU, same threads, same process; in every case the candidates are interleaved for up to
``--repeats`` rounds of up to ``--iters`` timed calls after a warm-up, and the tables show the
median per call. A ratio is the median over rounds of that round's ratio, so noise that drifts
between rounds hits both sides alike.

    python benchmarks/hopfield/retrieval.py [--threads 2] [--repeats 7] [--iters 20] [--big]

1. One dense step: ``retrieve(x, memories, beta, "softmax", steps=1)`` against the bare
   ``torch.softmax(beta * x @ memories.T, -1) @ memories`` on the same tensors (beta = 1/sqrt(d)).
   The project's goal is a ratio <= 1.3x.
2. Sparse separation on score matrices ``[B, M]`` (standard normal): forward, and forward plus
   backward (``torch.autograd.grad`` with a fixed random output gradient), of ``sparsemax``,
   ``entmax15`` and ``entmax_bisect(alpha=1.5)`` against ``torch.softmax``; side by side with the
   reference package (PyPI ``entmax`` 1.3, by deep-spin, a dev dependency), whose columns are
   left out with a note when it is not installed. The outputs (forward) and input
   gradients (forward plus backward) of the two are compared (max absolute difference).
   ``--big`` adds ``[1024, 60000]`` (about 4 GB at peak; bisection then takes about a minute per
   call on a 2-core VM).
3. Retrieval as M grows, d = 784, B = 64, random memories (fixed seed), inference (the feature map's
   weights do not require grad): ``retrieve(..., steps=1)`` plain and with
   ``LinearFeatureMap(784, 200)``, ``chunk_size=4096``. Time per memory should stay flat if the
   cost is linear in M; all sizes share the same rounds. Peak memory: every (M, variant) also runs
   once in a fresh process (forked from a ``multiprocessing`` forkserver that has only imported
   this module, so the slow ``zoo`` import is paid once), which builds its tensors, warms the
   kernels up on a 16-memory slice, resets its resident high-water mark
   (``echo 5 > /proc/self/clear_refs``), then reads ``VmHWM`` from ``/proc/self/status`` before and
   after one call; the difference is the resident memory the call needed on top of what the
   process already held (its inputs included). ``getrusage(RUSAGE_SELF).ru_maxrss`` would not do:
   it keeps the high-water mark of whatever the process was before exec (a subprocess starts from
   its parent's resident size) and cannot be reset. The child also reports how far the mark stood
   above its resident size before the call ("slack", 0 when the reset works): the increase can
   under-count by at most that much.

Prints machine information, three markdown tables and one JSON line, and draws section 3 to
``--plot`` (``docs/hopfield/retrieval_growth.png``). Timing cases are sized from
their warm-up: up to ``--iters`` calls per round while a round stays under 0.2 s, and at least 3
of the ``--repeats`` rounds while a case stays under 10 s.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from zoo.core.plots import save_figure
from zoo.hopfield.retrieval import LinearFeatureMap, retrieve
from zoo.nn.entmax import entmax15, entmax_bisect, sparsemax

try:
    import entmax as reference
except ImportError:  # optional: its columns are left out
    reference = None

ROUND_S = 0.2  # aim for at most this much time per round (all candidates) ...
CASE_S = 10.0  # ... and per case, but never fewer than 3 rounds nor 1 call per round

DENSE_SHAPES = [(256, 1000, 64), (256, 10000, 784), (1024, 1797, 64), (64, 60000, 784)]  # (B, M, d)
SCORE_SHAPES = [(256, 1000), (256, 10000), (64, 60000)]  # (B, M)
BIG_SCORE_SHAPE = (1024, 60000)
GROWTH_SIZES = [1000, 5000, 10000, 50000, 100000]
GROWTH_B, GROWTH_D, FEATURES, CHUNK = 64, 784, 200, 4096
VARIANTS = ("dense", "linear")  # without and with the feature map


def interleaved(calls: dict[str, Callable[[], object]], repeats: int, iters: int):
    """Warm every call up, then time interleaved rounds. Returns the seconds per call of each round,
    the rounds and calls per round used, and the first output of every call."""
    warm, outputs = {}, {}
    for name, call in calls.items():
        start = time.perf_counter()
        outputs[name] = call()
        warm[name] = time.perf_counter() - start
        if warm[name] < 0.5:  # the first call is cold; time a second one when it is cheap
            start = time.perf_counter()
            call()
            warm[name] = time.perf_counter() - start
    round_s = sum(warm.values())
    iters = max(1, min(iters, int(ROUND_S / round_s)))
    repeats = max(min(3, repeats), min(repeats, int(CASE_S / (round_s * iters))))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(iters):
                call()
            times[name].append((time.perf_counter() - start) / iters)
    return times, repeats, iters, outputs


def ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1e3, 4)


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    return round(statistics.median(a / b for a, b in zip(times[num], times[den])), 3)


def table(header: list[str], rows: list[list[str]]) -> None:
    """A markdown table, first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    cells = lambda row: "| " + " | ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |"
    print(cells(header))
    print("|" + "|".join(":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    for row in rows:
        print(cells(row))
    print()


# -- 1. one dense step ---------------------------------------------------------------------------
def dense_step(args) -> list[dict]:
    print("## 1. One dense retrieval step vs bare softmax attention\n")
    rows = []
    for b, m, d in DENSE_SHAPES:
        generator = torch.Generator().manual_seed(0)
        x, memories = torch.randn(b, d, generator=generator), torch.randn(m, d, generator=generator)
        beta = 1 / math.sqrt(d)
        calls = {
            "retrieve": lambda x=x, memories=memories: retrieve(x, memories, beta, "softmax", steps=1),
            "bare": lambda x=x, memories=memories: torch.softmax(beta * x @ memories.T, -1) @ memories,
        }
        times, repeats, iters, out = interleaved(calls, args.repeats, args.iters)
        rows.append({"B": b, "M": m, "d": d, "ms": {k: ms(t) for k, t in times.items()},
                     "ratio": ratio(times, "retrieve", "bare"), "repeats": repeats, "iters": iters,
                     "max_abs_diff": float((out["retrieve"] - out["bare"]).abs().max())})
        del x, memories, out
    table(["(B, M, d)", "retrieve ms", "bare ms", "retrieve / bare", "max |diff|", "rounds x calls"],
          [[f"({r['B']}, {r['M']}, {r['d']})", f"{r['ms']['retrieve']:.3f}", f"{r['ms']['bare']:.3f}",
            f"{r['ratio']:.3f}x", f"{r['max_abs_diff']:.1e}", f"{r['repeats']} x {r['iters']}"] for r in rows])
    worst = max(r["ratio"] for r in rows)
    print(f"slowest shape: {worst:.3f}x the bare step; goal <= 1.3x {'met' if worst <= 1.3 else 'NOT met'}\n")
    return rows


# -- 2. sparse separation ------------------------------------------------------------------------
def separation_maps() -> dict[str, dict[str, Callable]]:
    maps = {"sparsemax": {"zoo": sparsemax}, "entmax15": {"zoo": entmax15},
            "entmax_bisect": {"zoo": lambda z: entmax_bisect(z, 1.5)}}
    if reference is not None:
        maps["sparsemax"]["ref"] = reference.sparsemax
        maps["entmax15"]["ref"] = reference.entmax15
        maps["entmax_bisect"]["ref"] = lambda z: reference.entmax_bisect(z, 1.5)
    return maps


def sparse_separation(args) -> list[dict]:
    print("## 2. Sparse separation vs softmax on score matrices [B, M]\n")
    if reference is None:
        print("(the reference package `entmax` is not installed: its columns are left out)\n")
    maps = separation_maps()
    shapes = SCORE_SHAPES + ([BIG_SCORE_SHAPE] if args.big else [])
    rows = []
    for b, m in shapes:
        generator = torch.Generator().manual_seed(0)
        z, grad_out = torch.randn(b, m, generator=generator), torch.randn(b, m, generator=generator)
        leaf = z.clone().requires_grad_()
        fns = {"softmax": lambda s: torch.softmax(s, -1)}
        fns |= {f"{impl} {name}": fn for name, impls in maps.items() for impl, fn in impls.items()}
        for label in ("fwd", "fwd+bwd"):
            if label == "fwd":
                calls = {k: (lambda fn=fn, z=z: fn(z)) for k, fn in fns.items()}
            else:
                calls = {k: (lambda fn=fn, leaf=leaf, grad_out=grad_out: torch.autograd.grad(fn(leaf), leaf, grad_out)[0])
                         for k, fn in fns.items()}
            times, repeats, iters, out = interleaved(calls, args.repeats, args.iters)
            for name, impls in maps.items():
                row = {"B": b, "M": m, "pass": label, "map": name, "repeats": repeats, "iters": iters,
                       "ms": {"softmax": ms(times["softmax"])} | {i: ms(times[f"{i} {name}"]) for i in impls},
                       "ratio_vs_softmax": {i: ratio(times, f"{i} {name}", "softmax") for i in impls}}
                if "ref" in impls:
                    row["zoo_vs_ref"] = ratio(times, f"zoo {name}", f"ref {name}")
                    row["max_abs_diff_vs_ref"] = float((out[f"zoo {name}"] - out[f"ref {name}"]).abs().max())
                if label == "fwd":
                    row["mean_support"] = round(float((out[f"zoo {name}"] > 0).sum(-1).double().mean()), 1)
                rows.append(row)
            del out
        del z, grad_out, leaf
    header = ["[B, M]", "pass", "map", "softmax ms", "zoo ms", "zoo / softmax"]
    if reference is not None:
        header += ["entmax ms", "entmax / softmax", "zoo / entmax", "max |zoo - entmax|"]
    lines = []
    for r in rows:
        line = [f"[{r['B']}, {r['M']}]", r["pass"], r["map"], f"{r['ms']['softmax']:.3f}", f"{r['ms']['zoo']:.3f}",
                f"{r['ratio_vs_softmax']['zoo']:.1f}x"]
        if reference is not None:
            line += [f"{r['ms']['ref']:.3f}", f"{r['ratio_vs_softmax']['ref']:.1f}x", f"{r['zoo_vs_ref']:.2f}x",
                     f"{r['max_abs_diff_vs_ref']:.1e}"]
        lines.append(line)
    table(header, lines)
    supports = {name: " / ".join(f"{r['mean_support']:g}" for r in rows if r["pass"] == "fwd" and r["map"] == name)
                for name in maps}
    print(f"mean support (nonzero weights per row) for {' / '.join(f'[{b}, {m}]' for b, m in shapes)}: "
          + "; ".join(f"{name} {s}" for name, s in supports.items()))
    if reference is not None:
        print(f"reference: entmax {version('entmax')}; max |diff| is over outputs (fwd) and input gradients (fwd+bwd)")
    print()
    return rows


def version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version
    try:
        return _version(package)
    except PackageNotFoundError:
        return "unknown"


# -- 3. retrieval as M grows ---------------------------------------------------------------------
def growth_case(m: int, variant: str):
    """The queries, memories and retrieval call of one (M, variant), the same tensors in every process."""
    generator = torch.Generator().manual_seed(m)
    x = torch.randn(GROWTH_B, GROWTH_D, generator=generator)
    memories = torch.randn(m, GROWTH_D, generator=generator)
    beta = 1 / math.sqrt(GROWTH_D)
    if variant == "dense":
        return x, memories, lambda x, memories: retrieve(x, memories, beta, "softmax", steps=1)
    torch.manual_seed(m)
    feature_map = LinearFeatureMap(GROWTH_D, FEATURES).requires_grad_(False)
    return x, memories, lambda x, memories: retrieve(x, memories, beta, "softmax", feature_map=feature_map,
                                                     steps=1, chunk_size=CHUNK)


def resident_kb() -> tuple[int, int]:
    """This process's resident high-water mark and resident size, KiB (Linux ``/proc/self/status``)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmHWM"].split()[0]), int(status["VmRSS"].split()[0])


def peak_memory(case: tuple[int, str, int]) -> dict[str, float]:
    """In a fresh process forked from the forkserver: the high-water-mark increase of one call (module docstring)."""
    m, variant, threads = case
    torch.set_num_threads(threads)
    x, memories, call = growth_case(m, variant)
    call(x[:2], memories[:16])  # thread pool and kernels, without raising the high-water mark much
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # high-water mark := current resident size
    except OSError:
        pass  # no reset: the slack below says how much the increase may under-count
    before, resident = resident_kb()
    call(x, memories)
    after, _ = resident_kb()
    return {"peak_mb": (after - before) * 1024 / 1e6, "slack_mb": (before - resident) * 1024 / 1e6}


def growth(args) -> list[dict]:
    print(f"## 3. Retrieval as M grows (B = {GROWTH_B}, d = {GROWTH_D}; feature map {GROWTH_D} -> {FEATURES}, "
          f"chunk {CHUNK})\n")
    keys = [(m, variant) for m in GROWTH_SIZES for variant in VARIANTS]
    cases = {key: growth_case(*key) for key in keys}
    calls = {key: (lambda c=c: c[2](c[0], c[1])) for key, c in cases.items()}
    with torch.no_grad():  # every M in the same rounds, so drifting noise hits all sizes alike
        times, repeats, iters, _ = interleaved(calls, args.repeats, args.iters)
    del cases, calls
    # Started only now (it imports this module afresh, which would disturb the timings); its
    # children inherit the imports and nothing else.
    with multiprocessing.get_context("forkserver").Pool(1, maxtasksperchild=1) as pool:
        memory = dict(zip(keys, pool.map(peak_memory, [(*key, args.threads) for key in keys], chunksize=1)))
    rows = [{"M": m, "ms": {v: ms(times[m, v]) for v in VARIANTS},
             "us_per_memory": {v: round(statistics.median(times[m, v]) / m * 1e6, 4) for v in VARIANTS},
             "peak_mb": {v: round(memory[m, v]["peak_mb"], 1) for v in VARIANTS},
             "slack_mb": {v: round(memory[m, v]["slack_mb"], 1) for v in VARIANTS},
             "memories_mb": round(m * GROWTH_D * 4 / 1e6, 1), "scores_mb": round(GROWTH_B * m * 4 / 1e6, 1),
             "features_mb": round(m * FEATURES * 4 / 1e6, 1)} for m in GROWTH_SIZES]
    table(["M", "memories MB", "dense ms", "dense us/memory", "dense peak MB", "linear ms", "linear us/memory",
           "linear peak MB"],
          [[f"{r['M']:,}", f"{r['memories_mb']:.1f}", f"{r['ms']['dense']:.2f}", f"{r['us_per_memory']['dense']:.3f}",
            f"{r['peak_mb']['dense']:.1f}", f"{r['ms']['linear']:.2f}", f"{r['us_per_memory']['linear']:.3f}",
            f"{r['peak_mb']['linear']:.1f}"] for r in rows])
    big = rows[-1]
    print(f"rounds x calls: {repeats} x {iters}. peak MB: resident high-water-mark increase during one call in a fresh "
          f"process (slack <= {max(max(r['slack_mb'].values()) for r in rows):.1f} MB). For scale at "
          f"M = {big['M']:,}: one [B, M] score matrix is {big['scores_mb']:.1f} MB, the memories' features "
          f"[M, {FEATURES}] {big['features_mb']:.1f} MB.\n")
    for r in rows:
        r |= {"repeats": repeats, "iters": iters}
    return rows


def plot_growth(rows: list[dict], path: Path) -> None:
    """Time per call and peak memory vs M, both variants, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["M"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for variant, label in (("dense", "no feature map"), ("linear", f"linear Phi 784 -> {FEATURES}")):
        axes[0].plot(sizes, [r["ms"][variant] for r in rows], marker="o", label=label)
        axes[1].plot(sizes, [r["peak_mb"][variant] for r in rows], marker="o", label=label)
    axes[1].plot(sizes, [r["memories_mb"] for r in rows], linestyle="--", color="gray", label="the memories themselves")
    for ax, ylabel in zip(axes, ("ms per retrieval step (B = 64)", "peak memory of the call (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("number of memories M (d = 784)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--big", action="store_true", help=f"add the {list(BIG_SCORE_SHAPE)} score matrix to section 2")
    parser.add_argument("--plot", default="docs/hopfield/retrieval_growth.png", help="where to draw section 3")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"torch {torch.__version__}, {machine}, {torch.get_num_threads()} threads; "
          f"load average at start {os.getloadavg()[0]:.2f}\n")
    start = time.perf_counter()
    dense, sparse, grown = dense_step(args), sparse_separation(args), growth(args)
    plot_growth(grown, Path(args.plot))
    print(f"total {time.perf_counter() - start:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    print(json.dumps({
        "benchmark": "hopfield_retrieval", "threads": args.threads, "repeats": args.repeats, "iters": args.iters,
        "dense_step": dense, "max_dense_ratio": max(r["ratio"] for r in dense), "separation": sparse,
        "growth": grown, "entmax_reference": version("entmax") if reference is not None else None,
        "torch": torch.__version__, "machine": machine,
    }))


if __name__ == "__main__":
    main()
