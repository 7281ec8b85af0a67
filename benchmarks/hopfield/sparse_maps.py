"""Sparse maps against softmax: ``sparsemax`` and ``entmax15`` (``zoo.nn.entmax``) by full sort
(``method="sort"``, the old code), by growing top-k (``"topk"``) and by block maxima (``"blocks"``) on
score matrices ``[B, M]``. The default ``"auto"`` is ``"blocks"`` for rows of at least
``zoo.nn.entmax.AUTO_BLOCKS_FROM`` entries and ``"topk"`` below.

    python benchmarks/hopfield/sparse_maps.py [--threads 1] [--repeats 7] [--json docs/hopfield/sparse_maps.json]
    python benchmarks/hopfield/sparse_maps.py --device cuda --gpu-shapes   # on a GPU machine

Scores are standard normal (fixed seed), as in ``benchmarks/hopfield/retrieval.py`` (whose CPU shapes
these are). Passes: forward, and forward plus backward (``torch.autograd.grad`` with a fixed random
output gradient). All candidates of a (shape, pass) run in the same process, interleaved: after two
warm-up calls each, ``--repeats`` rounds in which every candidate makes its own number of calls
(sized from the warm-up to about 0.1 s, at least 1); the table shows medians of the per-call times,
and a ratio is the median over rounds of that round's ratio to softmax. On CUDA each round is timed
with CUDA events (synchronized at its end). Also reported: the largest difference between the two
methods' outputs (forward) and input gradients (forward plus backward), and the mean support.

Prints the machine, the load average, a markdown table and one JSON line (also written to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from zoo.nn.entmax import AUTO_BLOCKS_FROM, entmax15, sparsemax

CPU_SHAPES = [(256, 1000), (256, 10000), (64, 60000)]  # (B, M), the README's / docs' CPU shapes
GPU_SHAPES = [(1024, 100_000), (1024, 1_000_000)]  # the GPU shapes (B = 1024 queries)
ROUND_S = 0.1  # aim for about this much time per candidate per round


def timer(device: torch.device) -> Callable[[Callable[[], object], int], float]:
    """Seconds per call of ``iters`` calls: CUDA events on a GPU, ``perf_counter`` on the CPU."""
    if device.type == "cuda":
        def run(call, iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                call()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3 / iters
        return run

    def run(call, iters):
        start = time.perf_counter()
        for _ in range(iters):
            call()
        return (time.perf_counter() - start) / iters
    return run


def interleaved(calls: dict[str, Callable[[], object]], repeats: int, device: torch.device):
    """Per-round seconds per call of every candidate, and its calls per round."""
    run = timer(device)
    iters = {}
    for name, call in calls.items():
        run(call, 1)  # cold
        iters[name] = max(1, min(50, int(ROUND_S / max(run(call, 1), 1e-7))))
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(run(call, iters[name]))
    return times, iters


MAPS = {"sparsemax": sparsemax, "entmax15": entmax15}
METHODS = ("sort", "topk", "blocks")
FAST = ("topk", "blocks")


def candidates() -> dict[str, Callable]:
    calls = {"softmax": lambda z: torch.softmax(z, -1)}
    for name, fn in MAPS.items():
        for method in METHODS:
            calls[f"{name} {method}"] = lambda z, fn=fn, method=method: fn(z, method=method)
    return calls


def measure(shape: tuple[int, int], repeats: int, device: torch.device, passes: list[str]) -> list[dict]:
    b, m = shape
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(b, m, generator=generator).to(device)
    grad_out = torch.randn(b, m, generator=generator).to(device)
    leaf = z.clone().requires_grad_()
    fns = candidates()
    rows = []
    for label in passes:
        if label == "fwd":
            calls = {k: (lambda fn=fn: fn(z)) for k, fn in fns.items()}
        else:
            calls = {k: (lambda fn=fn: torch.autograd.grad(fn(leaf), leaf, grad_out)[0]) for k, fn in fns.items()}
        out = {k: call() for k, call in calls.items()}
        times, iters = interleaved(calls, repeats, device)
        row = {"B": b, "M": m, "pass": label, "repeats": repeats, "iters": iters,
               "ms": {k: round(statistics.median(t) * 1e3, 4) for k, t in times.items()},
               "ratio_vs_softmax": {k: round(statistics.median(a / s for a, s in zip(t, times["softmax"])), 2)
                                    for k, t in times.items() if k != "softmax"},
               "max_abs_diff_vs_sort": {f"{name} {method}": float((out[f"{name} {method}"] - out[f"{name} sort"])
                                                                  .abs().max()) for name in MAPS for method in FAST}}
        if label == "fwd":
            row["mean_support"] = {name: round(float((out[f"{name} sort"] > 0).sum(-1).double().mean()), 1)
                                   for name in MAPS}
            row["max_support"] = {name: int((out[f"{name} sort"] > 0).sum(-1).max()) for name in MAPS}
        rows.append(row)
        del out
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gpu-shapes", action="store_true", help=f"time {GPU_SHAPES} instead of {CPU_SHAPES}")
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument("--json", default=None, help="also write the JSON line here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    load_start = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {machine}, device {device}, {torch.get_num_threads()} threads; "
          f"load average at start {load_start:.2f}\n")
    passes = ["fwd"] if args.no_backward else ["fwd", "fwd+bwd"]
    start = time.perf_counter()
    rows = [row for shape in (GPU_SHAPES if args.gpu_shapes else CPU_SHAPES)
            for row in measure(shape, args.repeats, device, passes)]
    names = [f"{name} {method}" for name in MAPS for method in METHODS]
    print("| [B, M] | pass | softmax ms | " + " | ".join(f"{n} ms (x softmax)" for n in names)
          + " | max abs diff vs sort | mean / max support (sparsemax; entmax15) |")
    print("|---|---|---:|" + "---:|" * len(names) + "---:|---:|")
    for r in rows:
        cells = [f"{r['ms'][n]:.3f} ({r['ratio_vs_softmax'][n]:.1f}x)" for n in names]
        diff = max(r["max_abs_diff_vs_sort"].values())
        support = (f"{r['mean_support']['sparsemax']:g} / {r['max_support']['sparsemax']}; "
                   f"{r['mean_support']['entmax15']:g} / {r['max_support']['entmax15']}") if "mean_support" in r else ""
        print(f"| [{r['B']}, {r['M']}] | {r['pass']} | {r['ms']['softmax']:.3f} | " + " | ".join(cells)
              + f" | {diff:.1e} | {support} |")
    load_end = os.getloadavg()[0]
    print(f"\ntotal {time.perf_counter() - start:.0f} s; load average at end {load_end:.2f}")
    line = json.dumps({"benchmark": "hopfield_sparse_maps", "device": str(device), "threads": args.threads,
                       "auto_blocks_from": AUTO_BLOCKS_FROM,
                       "repeats": args.repeats, "rows": rows, "torch": torch.__version__, "machine": machine,
                       "load_average": [round(load_start, 2), round(load_end, 2)]})
    print(line)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
