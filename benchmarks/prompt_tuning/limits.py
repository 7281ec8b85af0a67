"""The paper's three claims as measurements on a frozen random one-layer, one-head transformer
(``zoo.prompt_tuning.limits``): universality, memorization capacity (beside LoRA and full
fine-tuning), and the efficiency phase transition of the prompt-induced queries and keys.

    python benchmarks/prompt_tuning/limits.py [--threads 1] [--only universality memorization phase]
    python benchmarks/prompt_tuning/limits.py --replot     # the PNGs again from the JSON files

Writes ``docs/prompt_tuning/limits_{universality,memorization,phase}.{json,png}`` and prints a
table per experiment plus one JSON line each. Every number is fp32 on CPU; seeds 0, 1, 2 draw the
frozen model, the target map / dataset and the prompt init together.

- universality: d = 2, L = 2, target ``y = f(X) + c`` with ``f`` a random 1-Lipschitz map
  (``lipschitz_map``) and ``c`` the frozen model's mean output on the training inputs (a constant,
  so ``y`` is still 1-Lipschitz); 128 training and 256 held-out inputs uniform in ``[0, 1]^{L x d}``;
  prompt lengths ``--lengths``; full-batch Adam, ``--steps`` steps, lr 0.1, cosine schedule.
  Error: ``relative_error`` (1 = the best constant output).
- memorization: N random pairs, inputs uniform in ``[0, 1]^{L x d}``, targets the frozen model's
  mean output plus N(0, 0.5^2) noise per entry; the smallest prompt length on the grid whose
  worst-pair RMS error is <= ``--tol`` after training (None: none on the grid; the same runs give it
  at ``--loose-tol`` too, see ``first_length``). Against N at
  (d, L) = (2, 1) and (2, 2); against dL at N = 4. Beside it, at N = 8, (d, L) = (2, 2): worst-pair
  error against trainable parameters for prompts, LoRA (``zoo.lora.apply_lora`` on all six linear
  layers, r = 1, 2, alpha = r) and full fine-tuning.
- phase: d = 4, positions of scale 0.01, m = 8 N(0, 1) prompt tokens and inputs uniform in
  ``[0, 1]^{L x d}``, both multiplied by one factor chosen so that the entry bound
  ``B = max |s^{1/2} Q|, |s^{1/2} K|``
  (``entry_scale``) hits each value of ``--bounds``; relative error of the model's output with
  ``attention="fast"`` (degrees 2, 4, 6) against exact attention, L = 1,024; then the time of one
  forward (batch 1) against L, exact vs fast degree 4, at B = 0.5.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from data_modules.seq2seq import lipschitz_inputs, lipschitz_map, memorization_pairs
from zoo.core.plots import save_figure
from zoo.lora import apply_lora, mark_only_lora_as_trainable
from zoo.prompt_tuning.limits import (
    OneLayerTransformer,
    PromptedTransformer,
    entry_scale,
    fit,
    prompt_qkv,
    relative_error,
    trainable_parameters,
    worst_pair_error,
)

SEEDS = (0, 1, 2)
OUT = Path(__file__).resolve().parents[2] / "docs" / "prompt_tuning"


def universality(args) -> dict:
    d, length, rows = 2, 2, []
    for seed in SEEDS:
        model = OneLayerTransformer(d, 16, seed=seed)
        f = lipschitz_map(length, d, seed=seed)
        x_train, x_test = lipschitz_inputs((128, 256), length, d, seed)
        with torch.no_grad():
            offset = model(x_train).mean(0) - f(x_train).mean(0)
            y_train, y_test = f(x_train) + offset, f(x_test) + offset
            rows.append({"seed": seed, "m": 0, "train": relative_error(model(x_train), y_train),
                         "test": relative_error(model(x_test), y_test), "seconds": 0.0})
        for m in args.lengths:
            torch.manual_seed(seed)
            tuned = PromptedTransformer(model, m)
            start = time.perf_counter()
            fit(tuned, x_train, y_train, steps=args.steps, lr=0.1)
            with torch.no_grad():
                row = {"seed": seed, "m": m, "train": relative_error(tuned(x_train), y_train),
                       "test": relative_error(tuned(x_test), y_test), "seconds": time.perf_counter() - start}
            rows.append(row)
            print(f"universality seed {seed} m {m:3d}: train {row['train']:.3f} test {row['test']:.3f} "
                  f"({row['seconds']:.1f} s)", flush=True)
    return {"dim": d, "length": length, "steps": args.steps, "rows": rows}


def dataset(model: OneLayerTransformer, n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, noise = memorization_pairs(n, length, model.dim, seed)
    with torch.no_grad():
        return x, model(x).mean(0) + noise


def train_error(module, x, y, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    fit(module, x, y, steps=steps, lr=0.1)
    with torch.no_grad():
        return worst_pair_error(module(x), y)


def smallest_prompt(d: int, length: int, n: int, seed: int, args) -> tuple[int | None, dict[int, float]]:
    model = OneLayerTransformer(d, 16, seed=seed)
    x, y = dataset(model, n, length, seed)
    errors = {}
    for m in args.grid:
        torch.manual_seed(seed)
        errors[m] = train_error(PromptedTransformer(model, m), x, y, args.steps, seed)
        if errors[m] <= args.tol:
            return m, errors
    return None, errors


def memorization(args) -> dict:
    against_n, against_dl, peft = [], [], []
    for d, length in ((2, 1), (2, 2)):
        for n in args.sizes:
            for seed in SEEDS:
                m, errors = smallest_prompt(d, length, n, seed, args)
                against_n.append({"d": d, "L": length, "N": n, "seed": seed, "m_min": m, "errors": errors})
                print(f"memorization d {d} L {length} N {n:3d} seed {seed}: m_min {m} "
                      f"(best {min(errors.values()):.3f})", flush=True)
    for d, length in ((1, 1), (2, 1), (2, 2), (4, 2)):
        for seed in SEEDS:
            m, errors = smallest_prompt(d, length, 4, seed, args)
            against_dl.append({"d": d, "L": length, "N": 4, "seed": seed, "m_min": m, "errors": errors})
            print(f"memorization dL {d * length} (d {d}, L {length}) N 4 seed {seed}: m_min {m}", flush=True)
    d, length, n = 2, 2, 8
    for seed in SEEDS:
        base = OneLayerTransformer(d, 16, seed=seed)
        x, y = dataset(base, n, length, seed)
        for m in (1, 4, 13, 26, 49):
            tuned = PromptedTransformer(base, m)
            peft.append({"method": "prompt", "m": m, "seed": seed, "params": trainable_parameters(tuned),
                         "error": train_error(tuned, x, y, args.steps, seed)})
        for r in (1, 2):
            model = OneLayerTransformer(d, 16, seed=seed)
            apply_lora(model, ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"), r=r, alpha=r)
            mark_only_lora_as_trainable(model)
            peft.append({"method": "lora", "r": r, "seed": seed, "params": trainable_parameters(model),
                         "error": train_error(model, x, y, args.steps, seed)})
        model = OneLayerTransformer(d, 16, seed=seed)
        peft.append({"method": "full", "seed": seed, "params": trainable_parameters(model),
                     "error": train_error(model, x, y, args.steps, seed)})
        for row in peft[-8:]:
            print(f"peft N {n} seed {seed} {row['method']:6s} params {row['params']:4d}: worst-pair error "
                  f"{row['error']:.3f}", flush=True)
    return {"tol": args.tol, "grid": args.grid, "steps": args.steps, "against_N": against_n,
            "against_dL": against_dl, "peft": peft}


def phase(args) -> dict:
    d, m, accuracy, timing = 4, 8, [], []
    model = OneLayerTransformer(d, 16, max_len=max(args.timing_lengths), seed=0, position_scale=0.01)
    g = torch.Generator().manual_seed(300)
    prompt = torch.randn(m, d, generator=g)
    x = torch.rand(1, 1024, d, generator=g)
    with torch.no_grad():
        base_scale = entry_scale(*prompt_qkv(model, x, prompt)[:2])
        for bound in args.bounds:
            # prompt and inputs scaled together (positions are ~0.01): B is linear in the factor, up to
            # the tiny positions, so a few fixed-point steps land it on the value
            factor = bound / base_scale
            for _ in range(5):
                factor *= bound / entry_scale(*prompt_qkv(model, x * factor, prompt * factor)[:2])
            xs, p = x * factor, prompt * factor
            measured = entry_scale(*prompt_qkv(model, xs, p)[:2])
            exact = model(xs, p)
            row = {"B": measured, "errors": {g_: output_error(model(xs, p, "fast", g_), exact)
                                             for g_ in (2, 4, 6)}}
            accuracy.append(row)
            print(f"phase L 1024 B {measured:5.2f}: fast error " +
                  " ".join(f"g{k} {v:.2e}" for k, v in row["errors"].items()), flush=True)
        factor = 0.5 / base_scale
        p = prompt * factor
        for length in args.timing_lengths:
            xl = 0.01 * factor * torch.rand(1, length, d, generator=g)
            times = {"exact": [], "fast": []}
            for _ in range(args.repeats):
                for kind in times:
                    start = time.perf_counter()
                    model(xl, p, kind, 4)
                    times[kind].append(time.perf_counter() - start)
            row = {"L": length, "B": entry_scale(*prompt_qkv(model, xl, p)[:2]),
                   "exact_ms": 1e3 * statistics.median(times["exact"]), "fast_ms": 1e3 * statistics.median(times["fast"]),
                   "fast_error": output_error(model(xl, p, "fast", 4), model(xl, p))}
            timing.append(row)
            print(f"phase timing L {length:6d}: exact {row['exact_ms']:8.2f} ms, fast g4 {row['fast_ms']:8.2f} ms, "
                  f"error {row['fast_error']:.1e}", flush=True)
    return {"dim": d, "m": m, "accuracy_L": 1024, "sqrt_log_L": math.sqrt(math.log(1024)),
            "accuracy": accuracy, "timing": timing}


def output_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """``|| approx - exact ||_F / || exact ||_F``."""
    return float((approx - exact).norm() / exact.norm())


def plot_universality(res: dict) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    lengths = sorted({r["m"] for r in res["rows"]})
    for split, style in (("train", "o-"), ("test", "s--")):
        means = [statistics.mean(r[split] for r in res["rows"] if r["m"] == m) for m in lengths]
        ax.plot([max(m, 0.5) for m in lengths], means, style, label=f"{split} (mean of 3 seeds)")
        for seed in SEEDS:
            ax.plot([max(m, 0.5) for m in lengths], [next(r[split] for r in res["rows"] if r["m"] == m
                                                          and r["seed"] == seed) for m in lengths],
                    style[0], alpha=0.25, color=ax.lines[-1].get_color())
    ax.axhline(1, color="gray", ls=":", lw=1, label="best constant output")
    ax.set(xscale="log", yscale="log", xlabel="prompt length m (m = 0 drawn at 0.5)", ylabel="relative error",
           title=f"1-Lipschitz target, d = {res['dim']}, L = {res['length']}")
    ax.legend(fontsize=8)
    save_figure(fig, OUT / "limits_universality.png")


def first_length(errors: dict, tol: float) -> int | None:
    """The smallest recorded prompt length with error <= tol. Exact for any tol >= the run's ``--tol``:
    a run records every grid length up to its first success."""
    return next((int(m) for m, e in sorted(errors.items(), key=lambda kv: int(kv[0])) if e <= tol), None)


def plot_memorization(res: dict, loose: float) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    axes = axes.ravel()
    grid_cap = max(res["grid"])
    cap = 2 * grid_cap
    ax = axes[0]
    for (d, length), style in (((2, 1), "--"), ((2, 2), "-")):
        for color, n in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], sorted({r["N"] for r in res["against_N"]})):
            rows = [r for r in res["against_N"] if (r["d"], r["L"], r["N"]) == (d, length, n)]
            full = [r for r in rows if len(r["errors"]) == len(res["grid"])]
            if full:
                lengths = res["grid"]
                means = [statistics.mean(r["errors"][str(m)] for r in full) for m in lengths]
                ax.plot(lengths, means, style, color=color, label=f"N = {n}, L = {length}" + (
                    f" ({len(full)} of 3 seeds)" if len(full) < 3 else ""))
    ax.axhline(res["tol"], color="gray", ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="prompt length m", ylabel="worst-pair RMS error after training",
           title="error vs m, d = 2 (mean of the seeds that never met tol)")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    for (d, length), color in (((2, 1), "C0"), ((2, 2), "C1")):
        rows = [r for r in res["against_N"] if r["d"] == d and r["L"] == length]
        for tol, marker in ((res["tol"], "o"), (loose, "^")):
            for r in rows:
                m = first_length(r["errors"], tol)
                ax.plot(r["N"], m or cap, marker if m else "x", color=color, alpha=0.6, mfc="none" if tol == loose else color)
            ax.plot([], [], marker, color=color, mfc="none" if tol == loose else color,
                    label=f"d = {d}, L = {length}, tol {tol:g}")
        sizes = sorted({r["N"] for r in rows})
        ax.plot(sizes, [n * length for n in sizes], ":", color=color, lw=1)
    ax.axhline(cap, color="gray", lw=0.5)
    ax.set(xscale="log", yscale="log", xlabel="N pairs", ylabel="smallest m on the grid",
           title=f"capacity vs N (dotted: m = N L; x: none up to {grid_cap})")
    ax.legend(fontsize=7)
    ax = axes[2]
    for tol, marker in ((res["tol"], "o"), (loose, "^")):
        for r in res["against_dL"]:
            m = first_length(r["errors"], tol)
            ax.plot(r["d"] * r["L"], m or cap, marker if m else "x", color="C2", alpha=0.6,
                    mfc="none" if tol == loose else "C2")
        ax.plot([], [], marker, color="C2", mfc="none" if tol == loose else "C2", label=f"tol {tol:g}")
    ax.axhline(cap, color="gray", lw=0.5)
    ax.set(yscale="log", xlabel="d L  ((d, L) = (1, 1), (2, 1), (2, 2), (4, 2))", ylabel="smallest m on the grid",
           title=f"capacity vs dL at N = 4 (x: none up to {grid_cap})")
    ax.legend(fontsize=8)
    ax = axes[3]
    for method, color in (("prompt", "C0"), ("lora", "C3"), ("full", "C4")):
        rows = [r for r in res["peft"] if r["method"] == method]
        params = sorted({r["params"] for r in rows})
        means = [statistics.mean(r["error"] for r in rows if r["params"] == p) for p in params]
        ax.plot(params, means, "o-", color=color, label=f"{method} (mean of 3 seeds)")
        ax.plot([r["params"] for r in rows], [r["error"] for r in rows], ".", color=color, alpha=0.3)
    ax.axhline(res["tol"], color="gray", ls=":", lw=1, label=f"tolerance {res['tol']}")
    ax.set(xscale="log", yscale="log", xlabel="trainable parameters", ylabel="worst-pair RMS error",
           title="N = 8, d = 2, L = 2: prompt vs LoRA vs full")
    ax.legend(fontsize=8)
    save_figure(fig, OUT / "limits_memorization.png")


def plot_phase(res: dict) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for degree in (2, 4, 6):
        left.plot([r["B"] for r in res["accuracy"]], [r["errors"][str(degree)] for r in res["accuracy"]], "o-",
                  label=f"fast, degree {degree}")
    left.axvline(res["sqrt_log_L"], color="gray", ls="--", lw=1, label="sqrt(log L), L = 1,024")
    left.set(xscale="log", yscale="log", xlabel="B = max entry of s^1/2 Q, s^1/2 K (prompt-induced)",
             ylabel="relative error of the output", title="accuracy against the entry bound")
    left.legend(fontsize=8)
    lengths = [r["L"] for r in res["timing"]]
    right.plot(lengths, [r["exact_ms"] for r in res["timing"]], "o-", label="exact softmax attention")
    right.plot(lengths, [r["fast_ms"] for r in res["timing"]], "s-", label="fast, degree 4 (F = 70)")
    right.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="forward time (ms, median)",
              title="inference time, B = 0.5, batch 1, 1 thread")
    right.set_xticks(lengths, [f"{n:,}" for n in lengths])
    right.set_xticks([], minor=True)
    right.legend(fontsize=8)
    save_figure(fig, OUT / "limits_phase.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", default=["universality", "memorization", "phase"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--grid", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--tol", type=float, default=0.1)
    parser.add_argument("--loose-tol", type=float, default=0.3, help="second tolerance, read off the same runs")
    parser.add_argument("--bounds", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1, 1.5, 2, 2.63, 3, 4, 6])
    parser.add_argument("--timing-lengths", type=int, nargs="+", default=[256, 1024, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--replot", action="store_true", help="redraw the PNGs from the JSON files, run nothing")
    args = parser.parse_args()
    plots = {"universality": plot_universality, "memorization": lambda res: plot_memorization(res, args.loose_tol),
             "phase": plot_phase}
    if args.replot:
        for name in args.only:
            plots[name](json.loads((OUT / f"limits_{name}.json").read_text()))
        return
    torch.set_num_threads(args.threads)
    meta = {"machine": platform.machine(), "torch": torch.__version__, "threads": args.threads}
    experiments = {"universality": universality, "memorization": memorization, "phase": phase}
    for name in args.only:
        start = time.perf_counter()
        res = {"benchmark": f"prompt_limits_{name}", **meta, **experiments[name](args)}
        res["seconds"] = time.perf_counter() - start
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"limits_{name}.json").write_text(json.dumps(res, indent=1) + "\n")
        plots[name](json.loads(json.dumps(res)))  # the plots read the JSON form (string keys)
        print(json.dumps({k: v for k, v in res.items() if k not in ("rows", "against_N", "against_dL", "peft",
                                                                      "accuracy", "timing")}))


if __name__ == "__main__":
    main()
