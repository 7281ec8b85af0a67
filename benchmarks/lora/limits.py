"""The computational limits of LoRA made measurable: (a) the norm threshold, the relative error of the
polynomial (almost-linear) LoRA gradient against the exact one as the entries of ``s Q K^T`` grow;
(b) time vs sequence length L for the exact gradient (materializes L x L) and the approximation.

    python benchmarks/lora/limits.py [--threads 1] [--repeats 3]

Both parts use ``zoo.lora.limits`` on one attention head with "partial" LoRA (W_Q, W_V; rank 4,
alpha 1), d = 16, Gaussian X, Y, W*, A, B (seed 0).

(a) fp64, L = 1024: X, W* and B are multiplied by one factor t, so the scores grow by t^4, chosen so
that ``B = max_ij |s q_i^T k_j|`` (measured exactly) hits each value of ``--bounds``; relative
Frobenius error of the gradient (all of dA, dB) for each of ``--degrees``. The plot marks
``sqrt(log L)`` (the threshold scale the paper states for the norms of X W* and X alpha B A / r)
and ``log L`` (the score scale those entries give: ``|score| <= Gamma^2`` in Alman & Song's
normalization).

(b) fp32, L in ``--lengths``: exact gradient vs degree ``--time-degree`` approximation at scores
B = 1; one warm-up call of each, then ``--repeats`` rounds that time every (L, method) once,
interleaved; the median. Exponents: least-squares slope of log time vs log L.

Prints two tables and one JSON line; writes ``docs/lora/limits.json``, ``docs/lora/limits_error.png``
and ``docs/lora/limits_time.png``. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from zoo.core.plots import save_figure
from zoo.lora.limits import approx_lora_gradient, lora_gradient, random_problem, relative_error
from zoo.nn.fast_attention import entry_bound, feature_dim, taylor_error_bound


def at_bound(problem, bound: float):
    """``problem`` scaled so that its largest score is ``bound`` (scores grow as the 4th power)."""
    return problem.scaled((bound / problem.max_score()) ** 0.25)


def threshold_sweep(args) -> list[dict]:
    base = random_problem(args.length, args.dim, args.rank, "partial", seed=0)
    rows = []
    for bound in args.bounds:
        problem = at_bound(base, bound)
        q, k, _ = problem.projections()
        _, exact = lora_gradient(problem)
        row = {"B": problem.max_score(), "row_norm_bound": entry_bound(q, k),
               "max_entry_qk": float(torch.cat([q, k]).abs().max() * problem.s**0.5), "errors": {}}
        for degree in args.degrees:
            start = time.perf_counter()
            row["errors"][degree] = relative_error(approx_lora_gradient(problem, degree)[1], exact)
            row.setdefault("seconds", {})[degree] = time.perf_counter() - start
        rows.append(row)
        print(f"{row['B']:6.2f} {row['row_norm_bound']:8.2f} {row['max_entry_qk']:7.2f}  "
              + "  ".join(f"{row['errors'][g]:9.2e}" for g in args.degrees))
    return rows


def time_sweep(args) -> dict:
    problems = {n: at_bound(random_problem(n, args.dim, args.rank, "partial", seed=0, dtype=torch.float32), 1.0)
                for n in args.lengths}
    methods = {"exact": lora_gradient, f"degree {args.time_degree}": lambda p: approx_lora_gradient(p, args.time_degree)}
    times = {m: {n: [] for n in args.lengths} for m in methods}
    for n in args.lengths:
        for call in methods.values():
            call(problems[n])
    for _ in range(args.repeats):
        for n in args.lengths:
            for name, call in methods.items():
                start = time.perf_counter()
                call(problems[n])
                times[name][n].append(time.perf_counter() - start)
    medians = {m: {n: statistics.median(t) for n, t in per.items()} for m, per in times.items()}
    for n in args.lengths:
        print(f"{n:6d}  " + "  ".join(f"{medians[m][n] * 1e3:10.1f}" for m in methods))
    slopes = {}
    for m in methods:
        x, y = np.log(args.lengths), np.log([medians[m][n] for n in args.lengths])
        big = np.array(args.lengths) >= 1024
        slopes[m] = {"all": float(np.polyfit(x, y, 1)[0]),
                     ">=1024": float(np.polyfit(x[big], y[big], 1)[0]) if big.sum() >= 2 else float("nan")}
    return {"seconds": medians, "exponents": slopes}


def plot(args, rows: list[dict], timing: dict) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    bounds = [r["B"] for r in rows]
    for degree in args.degrees:
        ax.plot(bounds, [r["errors"][degree] for r in rows], "o-", label=f"degree {degree} "
                f"(F = {feature_dim(args.dim, degree)})")
    root, log = math.sqrt(math.log(args.length)), math.log(args.length)
    ax.axvline(root, color="k", ls="--", label=f"sqrt(log L) = {root:.2f}")
    ax.axvline(log, color="gray", ls=":", label=f"log L = {log:.2f}")
    ax.set(xscale="log", yscale="log", xlabel="B = max |s q_i^T k_j|", ylabel="relative gradient error",
           title=f"Polynomial LoRA gradient, L = {args.length}, d = {args.dim}")
    ax.set_xticks(bounds, [f"{b:g}" for b in bounds], minor=False)
    ax.set_xticks([], minor=True)
    ax.legend(fontsize=8)
    save_figure(fig, args.out / "limits_error.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, per in timing["seconds"].items():
        ax.plot(args.lengths, [per[n] for n in args.lengths], "o-",
                label=f"{m} (slope {timing['exponents'][m]['>=1024']:.2f} for L >= 1024)")
    ax.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="seconds per gradient",
           title=f"LoRA gradient time, d = {args.dim}, {args.threads} thread(s), fp32")
    ax.set_xticks(args.lengths, [str(n) for n in args.lengths], minor=False)
    ax.set_xticks([], minor=True)
    ax.legend(fontsize=8)
    save_figure(fig, args.out / "limits_time.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--degrees", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--bounds", type=float, nargs="+", default=[0.25, 0.5, 1, 2, 3, 4, 6, 8])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--time-degree", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "lora")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, torch {torch.__version__}, threads {args.threads} (shared VM: noisy)\n")
    print(f"(a) relative error of the approximate gradient, L = {args.length}, d = {args.dim}, fp64")
    print("     B  rownorm  max|qk|  " + "  ".join(f"{'deg ' + str(g):>9}" for g in args.degrees))
    rows = threshold_sweep(args)
    print(f"\n(b) seconds per gradient (ms), d = {args.dim}, fp32, B = 1")
    print("     L  " + "  ".join(f"{m:>10}" for m in ("exact", f"degree {args.time_degree}")))
    timing = time_sweep(args)
    for m, s in timing["exponents"].items():
        print(f"fitted exponent {m}: {s['all']:.2f} (all L), {s['>=1024']:.2f} (L >= 1024)")
    out = {"threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
           "length": args.length, "dim": args.dim, "rank": args.rank, "sqrt_log_L": math.sqrt(math.log(args.length)),
           "taylor_bound_at_sqrt_log_L": {g: taylor_error_bound(math.sqrt(math.log(args.length)), g)
                                          for g in args.degrees},
           "threshold": rows, "time_degree": args.time_degree, "timing": timing}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "limits.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(args, rows, timing)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
