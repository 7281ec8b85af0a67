"""DP string distances (``zoo.dp_strings``): error vs (k, epsilon) beside the paper's bound shape, and query
time vs (m, n) beside exact distances from rapidfuzz. numpy, one process, the same threads throughout.
Times are the best of ``--repeats`` rounds (see ``timed``).

    python benchmarks/dp_strings/error_time.py [--threads 2] [--repeats 5] [--out docs/dp_strings]

1. Error. The query is a random string in {0,1}^n (n = 256); the m = 2000 database strings are copies at
   Hamming distance uniform in [0, k] (section 1a) or after uniform-in-[0, k] random edits (section 1b:
   substitution, or deletion plus a random bit appended, or insertion plus the last bit dropped; exact
   edit distance from rapidfuzz). Mean absolute error of ``query`` over the m estimates, averaged over
   3 (hash, noise) seeds, for both privacy units, against k (epsilon fixed) and epsilon (k fixed), next to
   the bound's shape k / e^(eps / log2 k) (Hamming) and k / e^(eps / (log2 k log2 n)) (edit), scaled to
   the first point of each curve. The edit estimate is the CGK distance; its distortion (estimate / ED,
   noiseless) is reported too.
2. Query time of one query against m strings: vs m (n = 1000) and vs n (m = 10^4), Hamming k = 16 and
   edit k = 4, with the fitted log-log exponent; and at m = 10^4, n = 10^3 the DP query beside exact
   distances (numpy Hamming, rapidfuzz ``process.cdist`` Hamming and Levenshtein, workers = 1).

Prints tables and one JSON line; writes ``error.png``, ``query_time.png`` and ``results.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Hamming, Levenshtein
from threadpoolctl import threadpool_limits

from zoo.core.plots import save_figure
from zoo.dp_strings import DPEditIndex, DPHammingIndex, cgk_embed, hamming

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/timing.py
from timing import rounds  # noqa: E402

N_ERR, M_ERR, SEEDS = 256, 2000, 3
KS, K_FIXED = [2, 4, 8, 16, 32, 64], 16
EPS_FIXED = {"bit": 8.0, "string": 256.0}
EPSILONS = [0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
EDIT_K, EDIT_EPS = [1, 2, 4, 8], [1, 4, 16, 64, 256, 1024, 4096]
TIME_M, TIME_N = [1000, 3000, 10000, 30000], [250, 500, 1000, 2000, 4000]


def near_hamming(b: np.ndarray, k: int, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    distances = rng.integers(0, k + 1, m)
    x = np.repeat(b[None], m, 0)
    for row, d in zip(x, distances):
        row[rng.choice(len(b), d, replace=False)] ^= 1
    return x, distances


def near_edit(b: np.ndarray, k: int, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    rows = []
    for _ in range(m):
        s = b.tolist()
        for _ in range(rng.integers(0, k + 1)):
            p, op = int(rng.integers(len(s))), rng.integers(3)
            if op == 0:
                s[p] ^= 1
            elif op == 1:
                s = s[:p] + s[p + 1:] + [int(rng.integers(2))]
            else:
                s = (s[:p] + [int(rng.integers(2))] + s[p:])[:-1]
        rows.append(s)
    x = np.array(rows, np.uint8)
    return x, np.array([Levenshtein.distance(r.tobytes(), b.tobytes()) for r in x])


def mae(cls, make, k: int, eps: float, unit: str, **kw) -> float:
    errors = []
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        b = rng.integers(0, 2, N_ERR).astype(np.uint8)
        x, truth = make(b, k, M_ERR, rng)
        index = cls(x, eps, k, seed=seed, unit=unit, noise_seed=100 + seed, **kw)
        errors.append(float(np.abs(index.query(b) - truth).mean()))
    return round(statistics.mean(errors), 3)


def shape(xs: list[float], ys: list[float], f) -> list[float]:
    """The bound's shape f(x), scaled to agree with the first measured point."""
    return [round(ys[0] * f(x) / f(xs[0]), 3) for x in xs]


def error_section() -> dict:
    print(f"## 1a. Hamming: mean absolute error (n = {N_ERR}, m = {M_ERR}, distances uniform in [0, k], "
          f"{SEEDS} seeds)\n")
    ham = {"vs_k": {}, "vs_eps": {}}
    for unit, eps in EPS_FIXED.items():
        ys = [mae(DPHammingIndex, near_hamming, k, eps, unit) for k in KS]
        bits = [DPHammingIndex(np.zeros((1, N_ERR), np.uint8), eps, k, seed=0, unit=unit).sensitivity() for k in KS]
        ham["vs_k"][unit] = {"epsilon": eps, "k": KS, "mae": ys, "bits_per_unit": bits}
        zs = [mae(DPHammingIndex, near_hamming, K_FIXED, e, unit) for e in EPSILONS]
        ham["vs_eps"][unit] = {"k": K_FIXED, "epsilon": EPSILONS, "mae": zs,
                               "bound_shape": shape(EPSILONS, zs, lambda e: K_FIXED / math.exp(e / math.log2(K_FIXED)))}
    bit = ham["vs_k"]["bit"]
    anchor = KS.index(K_FIXED)
    paper = [k / math.exp(bit["epsilon"] / max(1.0, math.log2(k))) for k in KS]
    bit["bound_shape"] = [round(bit["mae"][anchor] * f / paper[anchor], 3) for f in paper]
    noiseless = [mae(DPHammingIndex, near_hamming, k, 1e9, "string") for k in KS]
    ham["noiseless_mae"] = {"k": KS, "mae": noiseless}
    print(f"| k | bit unit (eps = {EPS_FIXED['bit']:g}) MAE | paper's shape k / e^(eps / log2 k), scaled at k = "
          f"{K_FIXED} | bits changed per unit | string unit (eps = {EPS_FIXED['string']:g}) MAE | bits per string "
          "| noiseless MAE |\n|---:|---:|---:|---:|---:|---:|---:|")
    for i, k in enumerate(KS):
        s_ = ham["vs_k"]["string"]
        print(f"| {k} | {bit['mae'][i]:.2f} | {bit['bound_shape'][i]:.3g} | {bit['bits_per_unit'][i]} | "
              f"{s_['mae'][i]:.2f} | {s_['bits_per_unit'][i]} | {noiseless[i]:.2f} |")
    print(f"\n| epsilon (k = {K_FIXED}) | bit unit MAE | paper's shape, scaled | string unit MAE | paper's shape, "
          "scaled |"
          "\n|---:|---:|---:|---:|---:|")
    for i, e in enumerate(EPSILONS):
        cells = [f"{ham['vs_eps'][u]['mae'][i]:.2f} | {ham['vs_eps'][u]['bound_shape'][i]:.2f}"
                 for u in ("bit", "string")]
        print(f"| {e:g} | " + " | ".join(cells) + " |")
    print(f"\n## 1b. Edit (string unit, one walk): mean absolute error of the estimate vs the exact CGK distance "
          f"(what it estimates) and vs the exact edit distance (n = {N_ERR}, m = {M_ERR}, edits uniform in [0, k], "
          f"{SEEDS} seeds)\n")
    edit = {"k": EDIT_K, "epsilon": EDIT_EPS, "mae_vs_cgk": {}, "mae_vs_ed": {}, "bound_shape": {}}
    for k in EDIT_K:
        errors = np.zeros((len(EDIT_EPS), 2))
        for seed in range(SEEDS):
            rng = np.random.default_rng(seed)
            b = rng.integers(0, 2, N_ERR).astype(np.uint8)
            x, ed = near_edit(b, k, M_ERR, rng)
            for i, e in enumerate(EDIT_EPS):
                index = DPEditIndex(x, e, k, seed=seed, noise_seed=100 + seed)
                walk = index.walks[0]  # the same for every epsilon (same seed)
                cgk = (cgk_embed(x, walk) != cgk_embed(b[None], walk)).sum(1)
                est = index.query(b)
                errors[i] += np.abs(est - cgk).mean() / SEEDS, np.abs(est - ed).mean() / SEEDS
        vs_cgk, vs_ed = errors.round(3).T.tolist()
        edit["mae_vs_cgk"][str(k)], edit["mae_vs_ed"][str(k)] = vs_cgk, vs_ed
        edit["bound_shape"][str(k)] = shape(EDIT_EPS, vs_cgk, lambda e, k=k: k / math.exp(
            e / (max(1.0, math.log2(k)) * math.log2(N_ERR))))
    rng = np.random.default_rng(0)
    b = rng.integers(0, 2, N_ERR).astype(np.uint8)
    x, ed = near_edit(b, 8, M_ERR, rng)
    walk = rng.integers(0, 2, (3 * N_ERR, 2)).astype(np.uint8)
    ratio = (cgk_embed(x, walk) != cgk_embed(b[None], walk)).sum(1)[ed > 0] / ed[ed > 0]
    edit["cgk_over_ed_k8"] = {"median": round(float(np.median(ratio)), 3),
                              "p10": round(float(np.percentile(ratio, 10)), 3),
                              "p90": round(float(np.percentile(ratio, 90)), 3), "min": round(float(ratio.min()), 3),
                              "max": round(float(ratio.max()), 3)}
    print("| k | " + " | ".join(f"eps {e:g}" for e in EDIT_EPS) + " |\n|---:|" + "---:|" * len(EDIT_EPS))
    for k in EDIT_K:
        print(f"| {k} | " + " | ".join(f"{a:.2f} ({b_:.2f})" for a, b_ in zip(edit["mae_vs_cgk"][str(k)],
                                                                          edit["mae_vs_ed"][str(k)])) + " |")
    d = edit["cgk_over_ed_k8"]
    print(f"\ncells: MAE vs exact CGK distance (MAE vs exact edit distance). Exact CGK distance / edit distance "
          f"(k = 8, n = {N_ERR}): median {d['median']}, 10-90% [{d['p10']}, {d['p90']}], "
          f"range [{d['min']}, {d['max']}] "
          "(CGK: always >= 0.5)\n")
    return {"hamming": ham, "edit": edit}


def timed(call, repeats: int) -> float:
    """Seconds per call: the best of ``repeats`` rounds of >= 50 ms (the best round is the least
    disturbed by other processes on a shared machine)."""
    return min(rounds(call, repeats, 0.05))


def time_section(repeats: int) -> dict:
    print("## 2. Query time (one query against m strings)\n")
    rng = np.random.default_rng(0)
    cases = {"hamming": (DPHammingIndex, 16), "edit": (DPEditIndex, 4)}
    out = {"vs_m": {}, "vs_n": {}, "exponent": {}}
    for name, (cls, k) in cases.items():
        for axis, grid in (("vs_m", TIME_M), ("vs_n", TIME_N)):
            ms = []
            for size in grid:
                m, n = (size, 1000) if axis == "vs_m" else (10000, size)
                x = rng.integers(0, 2, (m, n)).astype(np.uint8)
                index = cls(x, 8.0, k, seed=0, noise_seed=0)
                b = x[0].copy()
                ms.append(round(timed(lambda: index.query(b), repeats) * 1e3, 3))
            out[axis][name] = {"sizes": grid, "ms": ms}
            out["exponent"][f"{name}_{axis}"] = round(float(np.polyfit(np.log(grid), np.log(ms), 1)[0]), 2)
    print("| m (n = 1000) | " + " | ".join(f"{c} ms" for c in cases) + " |\n|---:|" + "---:|" * len(cases))
    for i, m in enumerate(TIME_M):
        print(f"| {m:,} | " + " | ".join(f"{out['vs_m'][c]['ms'][i]:.2f}" for c in cases) + " |")
    print("\n| n (m = 10,000) | " + " | ".join(f"{c} ms" for c in cases) + " |\n|---:|" + "---:|" * len(cases))
    for i, n in enumerate(TIME_N):
        print(f"| {n:,} | " + " | ".join(f"{out['vs_n'][c]['ms'][i]:.2f}" for c in cases) + " |")
    print("\nfitted exponents (log time vs log size): "
          + ", ".join(f"{key} {v}" for key, v in out["exponent"].items()) + "\n")
    m, n = 10000, 1000
    x = rng.integers(0, 2, (m, n)).astype(np.uint8)
    b = x[0] ^ (rng.random(n) < 0.01).astype(np.uint8)
    strings, query = ["".join(map(str, r)) for r in x], "".join(map(str, b))
    start = time.perf_counter()
    ham, edit = DPHammingIndex(x, 8.0, 16, seed=0), DPEditIndex(x, 8.0, 4, seed=0)
    build_s = time.perf_counter() - start
    calls = {
        "DP Hamming query (k = 16)": lambda: ham.query(b),
        "DP edit query (k = 4)": lambda: edit.query(b),
        "exact Hamming, numpy": lambda: hamming(x, b),
        "exact Hamming, rapidfuzz cdist": lambda: process.cdist([query], strings, scorer=Hamming.distance, workers=1),
        "exact Levenshtein, rapidfuzz cdist": lambda: process.cdist([query], strings, scorer=Levenshtein.distance,
                                                                    workers=1),
    }
    side = {name: round(timed(call, repeats) * 1e3, 3) for name, call in calls.items()}
    print(f"m = {m:,}, n = {n:,} (building both indexes: {build_s:.2f} s, once)\n\n| per query | ms |\n|:---|---:|")
    for name, t in side.items():
        print(f"| {name} | {t:.2f} |")
    print()
    out["side_by_side"] = {"m": m, "n": n, "ms": side, "build_both_s": round(build_s, 2)}
    return out


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ham, edit = results["error"]["hamming"], results["error"]["edit"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for unit, color in (("bit", "tab:blue"), ("string", "tab:red")):
        r = ham["vs_k"][unit]
        axes[0].plot(r["k"], r["mae"], "o-", color=color, label=f"{unit} unit, eps = {r['epsilon']:g}")
        r = ham["vs_eps"][unit]
        axes[1].plot(r["epsilon"], r["mae"], "o-", color=color, label=f"{unit} unit")
        axes[1].plot(r["epsilon"], r["bound_shape"], "--", color=color, label="k / e^(eps / log k), scaled")
    r = ham["vs_k"]["bit"]
    axes[0].plot(r["k"], r["bound_shape"], "--", color="tab:blue",
                 label=f"k / e^(eps / log k), scaled at k = {K_FIXED}")
    axes[0].plot(ham["noiseless_mae"]["k"], ham["noiseless_mae"]["mae"], ":", color="gray", label="no noise")
    axes[0].set_xscale("log", base=2)
    axes[0].set(yscale="log", xticks=KS, xticklabels=[str(k) for k in KS], xlabel="k", ylabel="mean absolute error",
                title=f"Hamming, n = {N_ERR}")
    axes[1].set(xscale="log", xlabel="epsilon", ylabel="mean absolute error", title=f"Hamming, k = {K_FIXED}",
                ylim=(0, None))
    for k in edit["k"]:
        line = axes[2].plot(edit["epsilon"], edit["mae_vs_cgk"][str(k)], "o-", label=f"k = {k}")[0]
        axes[2].plot(edit["epsilon"], edit["bound_shape"][str(k)], "--", color=line.get_color())
    axes[2].set_yscale("symlog", linthresh=1)
    axes[2].set(xscale="log", ylim=(0, None), xlabel="epsilon (string unit)", ylabel="MAE vs exact CGK distance",
                title="edit; dashed: k / e^(eps / (log k log n)), scaled")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, out / "error.png")
    t = results["time"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, axis, label in ((axes[0], "vs_m", "m (n = 1000)"), (axes[1], "vs_n", "n (m = 10,000)")):
        for name, r in t[axis].items():
            ax.plot(r["sizes"], r["ms"], "o-", label=f"DP {name} (slope {t['exponent'][f'{name}_{axis}']})")
        ax.set(xscale="log", yscale="log", xlabel=label, ylabel="ms per query")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, out / "query_time.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads (threadpoolctl)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="docs/dp_strings")
    args = parser.parse_args()
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"
    print(f"{machine}; load average at start {os.getloadavg()[0]:.2f}\n")
    start = time.perf_counter()
    with threadpool_limits(args.threads):
        results = {"benchmark": "dp_strings", "machine": machine, "threads": args.threads,
                   "error": error_section(), "time": time_section(args.repeats)}
    results["total_s"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"total {results['total_s']} s; load average at end {os.getloadavg()[0]:.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
