"""The degree-vs-B phase transition of the almost-linear LoRA gradient: how many polynomial features
it takes to reach a fixed accuracy as the score bound B grows, against what beats the exact L x L
gradient at sequence length L.

    python benchmarks/lora/phase.py [--threads 1] [--dim 4] [--tol 1e-3]

For each L in ``--lengths`` and each score bound B in ``--bounds``: one attention head with
"partial" LoRA (W_Q, W_V; rank 2, alpha 1), d = ``--dim``, Gaussian X, Y, W*, A, B (seed 0) from
``zoo.lora.limits.random_problem``, fp64; X, W* and B scaled by one factor so that the measured
``B = max_ij |s q_i^T k_j|`` hits the value (as ``benchmarks/lora/limits.py`` does). Then the even
degrees g = 2, 4, ..., ``--max-degree`` are tried in turn until the polynomial gradient
(``approx_lora_gradient``) reaches relative Frobenius error ``<= --tol`` against the exact one
(``lora_gradient``); g* is the first that does, "none" when no degree up to the cap does. The
features it needs are ``F* = C(d + g*, g*)`` (``zoo.nn.fast_attention.feature_dim``). The
approximation costs ``O(L F d^2)`` against the exact ``O(L^2 d)``: it can only be sub-quadratic while
``F* < L``, so the largest B on the grid with ``F* < L`` is the measured edge of the efficient
regime at that L, set beside ``sqrt(log L)`` (the paper's threshold scale for entries of X W) and
``log L`` (the score such entries give). Also reported: the degree Taylor's worst-case bound
``B^{g+1} / (g+1)! e^{2B} <= tol`` asks for (``taylor_error_bound``).

Prints a table and one JSON line; writes ``docs/lora/limits_degree.json`` and
``docs/lora/limits_degree.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from zoo.core.plots import save_figure
from zoo.lora.limits import approx_lora_gradient, lora_gradient, random_problem, relative_error
from zoo.nn.fast_attention import feature_dim, taylor_error_bound


def needed_degree(problem, exact, tol: float, max_degree: int) -> tuple[int | None, dict[int, float]]:
    """The smallest even degree whose approximate gradient is within ``tol`` (None: none up to the cap),
    and the error of every degree tried."""
    errors = {}
    for degree in range(2, max_degree + 1, 2):
        errors[degree] = relative_error(approx_lora_gradient(problem, degree)[1], exact)
        if errors[degree] <= tol:
            return degree, errors
    return None, errors


def bound_degree(bound: float, tol: float, max_degree: int) -> int | None:
    """The smallest even degree whose Taylor worst-case bound is ``<= tol`` (None above the cap)."""
    return next((g for g in range(2, max_degree + 1, 2) if taylor_error_bound(bound, g) <= tol), None)


def sweep(args) -> list[dict]:
    rows = []
    for length in args.lengths:
        base = random_problem(length, args.dim, args.rank, "partial", seed=0)
        for bound in args.bounds:
            problem = base.scaled((bound / base.max_score()) ** 0.25)
            start = time.perf_counter()
            _, exact = lora_gradient(problem)
            degree, errors = needed_degree(problem, exact, args.tol, args.max_degree)
            features = feature_dim(args.dim, degree) if degree is not None else None
            q, k, _ = problem.projections()
            row = {"L": length, "B": problem.max_score(), "max_entry_qk": float(torch.cat([q, k]).abs().max()
                                                                                  * problem.s ** 0.5),
                   "degree": degree, "features": features, "sub_quadratic": features is not None and features < length,
                   "bound_degree": bound_degree(problem.max_score(), args.tol, args.max_degree),
                   "errors": errors, "seconds": time.perf_counter() - start}
            rows.append(row)
            print(f"{length:6d} {row['B']:6.2f} {row['max_entry_qk']:6.2f}  {fmt(degree):>5} {fmt(features):>7} "
                  f"{'yes' if row['sub_quadratic'] else 'no':>5} {fmt(row['bound_degree']):>6}  "
                  f"{min(errors.values()):8.1e}  {row['seconds']:6.1f}")
    return rows


def fmt(value) -> str:
    return "none" if value is None else f"{value:,}"


def edges(args, rows: list[dict]) -> dict[int, dict]:
    """Per L: the largest B of the grid up to which every B has ``F* < L``, beside sqrt(log L), log L."""
    out = {}
    for length in args.lengths:
        edge = None
        for row in (r for r in rows if r["L"] == length):
            if not row["sub_quadratic"]:
                break
            edge = row["B"]
        out[length] = {"edge_B": edge, "sqrt_log_L": math.sqrt(math.log(length)), "log_L": math.log(length)}
    return out


def plot(args, rows: list[dict]) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    cap = args.max_degree + 2  # where "none up to the cap" is drawn
    for color, length in zip(colors, args.lengths):
        mine = [r for r in rows if r["L"] == length]
        found = [r for r in mine if r["degree"] is not None]
        missing = [r["B"] for r in mine if r["degree"] is None]
        left.plot([r["B"] for r in found], [r["degree"] for r in found], "o-", color=color, label=f"L = {length:,}")
        right.plot([r["B"] for r in found], [r["features"] for r in found], "o-", color=color, label=f"L = {length:,}")
        left.plot(missing, [cap] * len(missing), "x", color=color, ms=8)
        right.plot(missing, [feature_dim(args.dim, cap)] * len(missing), "x", color=color, ms=8)
        right.axhline(length, color=color, ls=":", lw=1)
        for ax in (left, right):
            ax.axvline(math.log(length), color=color, ls="--", lw=1)
    first = [r for r in rows if r["L"] == args.lengths[0]]
    left.plot([r["B"] for r in first], [r["bound_degree"] or cap for r in first], "s:", color="gray",
              label="Taylor worst-case bound")
    degrees = list(range(2, args.max_degree + 1, 2))
    left.set_yticks(degrees + [cap], [str(g) for g in degrees] + ["none"])
    left.set(xscale="log", xlabel="B = max |s q_i^T k_j|", ylabel=f"smallest even degree g*, error <= {args.tol:g}",
             title="degree needed (dashed: log L)")
    right.set(xscale="log", yscale="log", xlabel="B = max |s q_i^T k_j|", ylabel="features F* = C(d + g*, g*)",
              title=f"features needed, d = {args.dim} (dotted: F = L; x: none)")
    ticks = [b for b in (0.25, 0.5, 1, 2, 4, 8, 16) if min(args.bounds) <= b <= max(args.bounds)]
    for ax in (left, right):
        ax.set_xticks(ticks, [f"{b:g}" for b in ticks], minor=False)
        ax.set_xticks([], minor=True)
        ax.legend(fontsize=8)
    save_figure(fig, args.out / "limits_degree.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--bounds", type=float, nargs="+", default=[0.25, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16])
    parser.add_argument("--dim", type=int, default=4)
    parser.add_argument("--rank", type=int, default=2)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-degree", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "lora")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"machine: {platform.machine()}, torch {torch.__version__}, threads {args.threads}; d = {args.dim}, "
          f"rank {args.rank}, tolerance {args.tol:g}, even degrees 2..{args.max_degree}, fp64\n")
    print("     L      B  max|qk|     g*      F*  F*<L  bound g  best err  seconds")
    rows = sweep(args)
    edge = edges(args, rows)
    print()
    for length, e in edge.items():
        print(f"L = {length:5d}: F* < L for every grid B up to {fmt(e['edge_B'] and round(e['edge_B'], 2))}; "
              f"sqrt(log L) = {e['sqrt_log_L']:.2f}, log L = {e['log_L']:.2f}")
    out = {"benchmark": "lora_degree_phase", "machine": platform.machine(), "torch": torch.__version__,
           "threads": args.threads, "dim": args.dim, "rank": args.rank, "tol": args.tol,
           "max_degree": args.max_degree, "rows": rows, "edges": edge,
           "seconds": time.perf_counter() - start}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "limits_degree.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(args, rows)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
