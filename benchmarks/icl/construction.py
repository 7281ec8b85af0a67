"""The hand-set GD transformer (``zoo.icl.construction``): how far it is from true gradient descent
(vs the number of steps L, the number of ReLU terms, the ramp width), and how it compares with the
shipped trained ICL models on the same prompts.

    python benchmarks/icl/construction.py [--threads 1] [--prompts 1000] [--construct-prompts 200]

Prompts: the ``relu_net`` task of the shipped models (``data_modules.icl_tasks.sample_prompts``:
d = 5, 3-layer, 32-wide He-initialized networks, targets normalized per network), 15 examples and
one query (the 16th point).

1. **Error vs L** (64 prompts, seed ``--seed + 1``): the transformer for an N = 2 and N = 3,
   8-wide network (He init, seed 0), eta = 0.1, L = 32, with each product rule; max |entry| of
   ``w_t - w_t(GD)`` over layers, max and median over prompts, and of the query prediction, for
   t = 0..32 (one
   transformer gives every t: ``trace``). Also how many hidden pre-activations of the true GD path
   fall inside the ramp (0, delta) and the largest |v| (the products' operand) on it.
2. **Error vs the number of ReLU terms** (same prompts, ``product="relu_sum"``, bound 32, L = 8):
   max error after 1 and 8 steps (and the median over prompts after 8) for 4..1024 pieces, with
   the a-priori one-step bound for N = 2 (eta h^2 / 8 max|x|, h = 33 / pieces).
3. **Error vs the ramp width** (``product="ewml"``, exact products; L = 8): error and the fraction
   of pre-activations on the GD path inside (0, delta).
4. **Comparison** (``--prompts`` prompts, seed ``--seed``, as ``benchmarks/icl/curves.py``): at
   k = 5, 10, 15 examples, normalized squared error of zero, least squares, ridge 0.1, the shipped
   ``icl-relu3-d5`` (GPT-2) and ``icl-encoder-relu3-d5`` (ReLU-attention encoder), reference GD on
   a 3-layer, 32-wide network (He init with the last layer zeroed, so it starts at the zero
   predictor; eta and L chosen on 500 validation prompts, seed 999, over eta in {0.01, 0.03, 0.1,
   0.3} and L in {1, 2, 5, 10, 20}), and the hand-set transformer running that GD
   (``product="gate"``) on the first ``--construct-prompts`` prompts (its cost: see the JSON), with
   every method also on that subset.

Writes ``docs/icl/construction.json``, ``docs/icl/construction.png`` (sections 1-3) and
``docs/icl/construction_comparison.png`` (section 4); ``--replot`` redraws them from the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import zoo
from data_modules.icl_tasks import sample_prompts
from zoo.core.plots import save_figure
from zoo.icl.baselines import least_squares
from zoo.icl.construction import batched_gd, build_gd_transformer, he_init

D, N_EXAMPLES, ETA, WIDTH, BOUND, DELTA = 5, 15, 0.1, 8, 32.0, 1e-6
TERMS = [4, 6, 8, 12, 16, 24, 32, 33, 48, 64, 66, 96, 128, 132, 192, 256, 264, 384, 512, 1024]
RAMPS = [1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]
POSITIONS = [5, 10, 15]


def prompts(num: int, seed: int, n_points: int = N_EXAMPLES + 1):
    xs, ys, _ = sample_prompts("relu_net", num, n_points, D, torch.Generator().manual_seed(seed), depth=3, hidden=32)
    return xs.double(), ys.double()


def per_prompt_error(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> torch.Tensor:
    """``[steps + 1, B]``: max |entry| of ``a[t] - b[t]`` over the layers, per prompt."""
    return torch.stack([torch.stack([(x - y).abs().amax((1, 2)) for x, y in zip(ta, tb)]).amax(0)
                        for ta, tb in zip(a, b)])


def max_error(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> list[float]:
    """Per step t: max |entry| of ``a[t] - b[t]`` over prompts and layers."""
    return per_prompt_error(a, b).amax(1).tolist()


def path_statistics(xs, ys, iterates, delta: float) -> dict:
    """On the GD path: pre-activations inside (0, delta), their count, and the largest |v|."""
    inside, total, vmax = 0, 0, 0.0
    for w in iterates[:-1]:
        hs, zs = [xs], []
        for l, m in enumerate(w):
            z = hs[-1] @ m.transpose(1, 2)
            zs.append(z)
            hs.append(torch.relu(z) if l < len(w) - 1 else z)
        s = hs[-1] - ys[..., None]
        for l in range(len(w) - 1, 0, -1):
            v = s @ w[l]
            vmax = max(vmax, v.abs().max().item())
            s = (zs[l - 1] > 0).double() * v
        for z in zs[:-1]:
            inside += int(((z > 0) & (z < delta)).sum())
            total += z.numel()
    return {"inside_ramp": inside, "preactivations": total, "max_abs_v": round(vmax, 4)}


def error_vs_steps(xs, ys, xq, steps: int = 32) -> dict:
    out = {}
    for depth in (2, 3):
        init = he_init(D, depth, WIDTH, seed=0)
        true_iterates, true_predictions = batched_gd(xs, ys, xq, init, ETA, steps)
        res = {"path": path_statistics(xs, ys, true_iterates, DELTA)}
        for label, kwargs in (("gate", {"product": "gate"}), ("ewml", {"product": "ewml"}),
                              ("relu_sum 64", {"product": "relu_sum", "relu_terms": 64}),
                              ("relu_sum 256", {"product": "relu_sum", "relu_terms": 256})):
            start = time.perf_counter()
            model = build_gd_transformer(depth, steps, WIDTH, ETA, n_dims=D, ramp_width=DELTA, bound=BOUND, seed=0,
                                         **kwargs)
            built = time.perf_counter()
            with torch.no_grad():
                trace = model.trace(xs, ys, xq)
            ran = time.perf_counter()
            errors = per_prompt_error(trace.iterates, true_iterates)
            res[label] = {"weights": errors.amax(1).tolist(), "weights_median": errors.median(1).values.tolist(),
                          "prediction": (trace.predictions - true_predictions).abs().amax((0, 2)).tolist(),
                          "layers": len(model.layers), "describe": model.describe(),
                          "build_s": round(built - start, 2), "run_s": round(ran - built, 2)}
            print(f"N={depth} {label:>13}: max (median over prompts) |w_t - w_t(GD)| at t=1/8/32: "
                  + " / ".join(f"{res[label]['weights'][t]:.2e} ({res[label]['weights_median'][t]:.1e})"
                               for t in (1, 8, steps))
                  + f"; prediction at t=32: {res[label]['prediction'][steps]:.2e} ({ran - built:.1f} s)")
        print(f"N={depth} true GD path: {res['path']}")
        out[f"N={depth}"] = res
    return out


def error_vs_terms(xs, ys, xq, steps: int = 8) -> dict:
    out = {}
    for depth in (2, 3):
        init = he_init(D, depth, WIDTH, seed=0)
        true_iterates, _ = batched_gd(xs, ys, xq, init, ETA, steps)
        one, last, median = [], [], []
        for terms in TERMS:
            model = build_gd_transformer(depth, steps, WIDTH, ETA, terms, n_dims=D, ramp_width=DELTA, bound=BOUND,
                                         seed=0)
            with torch.no_grad():
                errors = per_prompt_error(model.trace(xs, ys, xq).iterates, true_iterates)
            one.append(errors[1].max().item())
            last.append(errors[steps].max().item())
            median.append(errors[steps].median().item())
        h = [(BOUND + 1) / t for t in TERMS]
        bound = [ETA * hh * hh / 8 * xs.abs().max().item() for hh in h] if depth == 2 else None
        out[f"N={depth}"] = {"terms": TERMS, "after_1": one, f"after_{steps}": last, f"after_{steps}_median": median,
                             "one_step_bound": bound,
                             "aligned": [t for t in TERMS if (2 * t / (BOUND + 1)).is_integer()]}
        print(f"N={depth} relu_sum, max |w - w(GD)| after 1 / {steps} steps (median over prompts): "
              + ", ".join(f"{t}: {a:.1e}/{b:.1e} ({c:.1e})" for t, a, b, c in zip(TERMS, one, last, median)))
    return out


def error_vs_ramp(xs, ys, xq, steps: int = 8) -> dict:
    out = {}
    for depth in (2, 3):
        init = he_init(D, depth, WIDTH, seed=0)
        true_iterates, _ = batched_gd(xs, ys, xq, init, ETA, steps)
        errors, inside = [], []
        for delta in RAMPS:
            model = build_gd_transformer(depth, steps, WIDTH, ETA, n_dims=D, product="ewml", ramp_width=delta, seed=0)
            with torch.no_grad():
                errors.append(max_error(model.trace(xs, ys, xq).iterates, true_iterates)[steps])
            stats = path_statistics(xs, ys, true_iterates, delta)
            inside.append(stats["inside_ramp"] / stats["preactivations"])
        out[f"N={depth}"] = {"ramp_width": RAMPS, f"after_{steps}": errors, "fraction_inside": inside}
        print(f"N={depth} ewml, max |w - w(GD)| after {steps} steps vs ramp width: "
              + ", ".join(f"{d:g}: {e:.1e} ({f:.1e} inside)" for d, e, f in zip(RAMPS, errors, inside)))
    return out


def summary(errors: torch.Tensor) -> list[float]:
    """Mean and 95% normal CI half-width over prompts."""
    return [round(errors.mean().item(), 4), round(1.96 * errors.std().item() / math.sqrt(len(errors)), 4)]


def gd_learner(depth: int = 3, width: int = 32) -> list[torch.Tensor]:
    init = he_init(D, depth, width, seed=0)
    init[-1] = torch.zeros_like(init[-1])
    return init


def choose_gd(init) -> dict:
    xs, ys = prompts(500, 999)
    k = N_EXAMPLES
    grid = {}
    for eta in (0.01, 0.03, 0.1, 0.3):
        _, predictions = batched_gd(xs[:, :k], ys[:, :k], xs[:, k], init, eta, 20)
        for steps in (1, 2, 5, 10, 20):
            err = ((predictions[:, steps, 0] - ys[:, k]) ** 2).mean().item()
            grid[f"eta={eta}, L={steps}"] = round(err if math.isfinite(err) else float("inf"), 4)
    best = min(grid, key=grid.get)
    eta, steps = (float(best.split(",")[0][4:]), int(best.split("L=")[1]))
    print(f"GD learner on 500 validation prompts at k={k}: best {best} (nmse {grid[best]}); grid {grid}")
    return {"eta": eta, "steps": steps, "validation_nmse": grid}


def comparison(num: int, seed: int, construct: int) -> dict:
    xs, ys = prompts(num, seed)
    init = gd_learner()
    choice = choose_gd(init)
    eta, steps = choice["eta"], choice["steps"]
    preds, seconds = {}, {}
    for label, name in (("icl-relu3-d5 (GPT-2, softmax)", "icl-relu3-d5"),
                        ("icl-encoder-relu3-d5 (ReLU attention)", "icl-encoder-relu3-d5")):
        model = zoo.load_pretrained(name)
        start = time.perf_counter()
        with torch.no_grad():
            out = torch.cat([model(x.float(), y.float()) for x, y in zip(xs.split(250), ys.split(250))]).double()
        seconds[label] = round(time.perf_counter() - start, 2)
        preds[label] = out[:, POSITIONS]
    preds["zero"] = torch.zeros(num, len(POSITIONS), dtype=torch.float64)
    preds["least squares"] = least_squares(xs, ys)[:, POSITIONS]
    preds["ridge 0.1"] = least_squares(xs, ys, 0.1)[:, POSITIONS]
    gd, paths = [], {}
    start = time.perf_counter()
    for k in POSITIONS:
        gd.append(batched_gd(xs[:, :k], ys[:, :k], xs[:, k], init, eta, steps)[1][:, -1, 0])
    seconds["reference GD"] = round(time.perf_counter() - start, 2)
    for k in POSITIONS:  # where the hand-set transformer can leave GD: pre-activations in the ramp
        iterates, _ = batched_gd(xs[:construct, :k], ys[:construct, :k], xs[:construct, k], init, eta, steps)
        paths[f"k={k}"] = path_statistics(xs[:construct, :k], ys[:construct, :k], iterates, DELTA)
    label_gd = f"reference GD (N=3, width 32, eta={eta}, L={steps})"
    preds[label_gd] = torch.stack(gd, 1)
    model = build_gd_transformer(3, steps, 32, eta, n_dims=D, product="gate", ramp_width=DELTA, bound=BOUND,
                                 init=init)
    constructed = []
    start = time.perf_counter()
    with torch.no_grad():
        for k in POSITIONS:
            constructed.append(torch.cat([model(x[:, :k], y[:, :k], x[:, k]) for x, y in
                                          zip(xs[:construct].split(50), ys[:construct].split(50))]))
    seconds["hand-set transformer"] = round(time.perf_counter() - start, 2)
    constructed = torch.stack(constructed, 1)
    targets = ys[:, POSITIONS]
    table = {label: {f"k={k}": summary((p[:, i] - targets[:, i]) ** 2) for i, k in enumerate(POSITIONS)}
             for label, p in preds.items()}
    subset = {label: {f"k={k}": summary((p[:construct, i] - targets[:construct, i]) ** 2)
                      for i, k in enumerate(POSITIONS)} for label, p in preds.items()}
    label_c = f"hand-set transformer ({model.describe()['layers']} layers, gate products)"
    subset[label_c] = {f"k={k}": summary((constructed[:, i] - targets[:construct, i]) ** 2)
                       for i, k in enumerate(POSITIONS)}
    diff = (constructed - preds[label_gd][:construct]).abs()
    print(f"\nComparison, {num} prompts (normalized squared error, mean ± 95% CI):")
    for label, row in table.items():
        print(f"| {label} | " + " | ".join(f"{m:.3f}±{c:.3f}" for m, c in row.values()) + " |")
    print(f"On the first {construct} prompts:")
    for label, row in subset.items():
        print(f"| {label} | " + " | ".join(f"{m:.3f}±{c:.3f}" for m, c in row.values()) + " |")
    above = {f"{t:g}": int((diff > t).sum()) for t in (1e-8, 1e-6, 1e-4)}
    print(f"max |hand-set - reference GD| prediction: {diff.max().item():.2e}; predictions (of "
          f"{diff.numel()}) differing by more than 1e-8 / 1e-6 / 1e-4: {list(above.values())}; "
          f"GD path of those prompts: {paths}; seconds {seconds}")
    return {"prompts": num, "seed": seed, "construct_prompts": construct, "positions": POSITIONS, "gd": choice,
            "all_prompts": table, "subset": subset, "max_abs_diff_constructed_vs_gd": diff.max().item(),
            "predictions_differing_by_more_than": above, "gd_path": paths,
            "constructed_describe": model.describe(), "seconds": seconds}


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.4))
    axes = axes.flat
    colors = {"gate": "tab:green", "ewml": "tab:purple", "relu_sum 64": "tab:orange", "relu_sum 256": "tab:red"}
    floor = 1e-17
    for ax, depth in zip(axes[:2], ("N=2", "N=3")):
        res = results["steps"][depth]
        for label, color in colors.items():
            for key, style, tag in (("weights", "-", "max"), ("weights_median", ":", "median")):
                errors = [max(e, floor) for e in res[label][key]]
                ax.semilogy(range(len(errors)), errors, style, color=color, label=f"{label}, {tag}")
        ax.set(xlabel="GD steps t", ylabel="|w_t - w_t(GD)| (over prompts)",
               title=f"{depth}: error vs steps (d=5, width 8, eta=0.1, 64 prompts)")
        ax.legend(fontsize=7, ncol=2)
    steps_key = None
    for depth, style, marker in (("N=2", "-", "o"), ("N=3", "--", "s")):
        res = results["terms"][depth]
        steps_key = [k for k in res if k.startswith("after_") and k not in ("after_1",) and "median" not in k][0]
        for series, color, tag in (("after_1", "tab:blue", "max, 1 step"), (steps_key, "tab:red", "max, 8 steps"),
                                   (steps_key + "_median", "tab:orange", "median, 8 steps")):
            axes[2].loglog(res["terms"], [max(e, floor) for e in res[series]], style, marker=marker, ms=3,
                           color=color, label=f"{depth}, {tag}")
        if res["one_step_bound"]:
            axes[2].loglog(res["terms"], res["one_step_bound"], ":", color="black",
                           label="a-priori bound, 1 step, N=2")
    for t in results["terms"]["N=2"]["aligned"]:
        axes[2].axvline(t, color="grey", lw=0.6, alpha=0.5)
    axes[2].set(xlabel="ReLU-sum pieces per square (relu_terms)", ylabel="|w - w(GD)|",
                title="relu_sum products (bound 32); grey lines: 2/h integer")
    axes[2].legend(fontsize=7)
    for depth, style in (("N=2", "-"), ("N=3", "--")):
        res = results["ramp"][depth]
        key = [k for k in res if k.startswith("after_")][0]
        axes[3].loglog(res["ramp_width"], [max(e, floor) for e in res[key]], style, marker="o", ms=3,
                       color="tab:purple", label=f"max |w - w(GD)|, 8 steps, {depth}")
        axes[3].loglog(res["ramp_width"], [max(f, floor) for f in res["fraction_inside"]], style, marker="x", ms=3,
                       color="grey", label=f"fraction of z in (0, delta), {depth}")
    axes[3].set(xlabel="ramp width delta", title="ReLU' as a ramp (exact ewml products)")
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    save_figure(fig, out / "construction.png")

    comp = results["comparison"]
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    rows = comp["subset"]
    width = 0.8 / len(rows)
    for i, (label, row) in enumerate(rows.items()):
        means = [row[f"k={k}"][0] for k in comp["positions"]]
        cis = [row[f"k={k}"][1] for k in comp["positions"]]
        ax.bar([j + i * width for j in range(len(means))], means, width, yerr=cis, label=label, capsize=2)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(comp["positions"]))],
                  [f"k={k}" for k in comp["positions"]])
    ax.set_ylim(0, 2.0)
    ax.set_ylabel("normalized squared error")
    ax.set_title(f"N=3 ReLU-net prompts, first {comp['construct_prompts']} of {comp['prompts']} (mean ± 95% CI)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, out / "construction_comparison.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--construct-prompts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--out", type=Path, default=Path("docs/icl"))
    parser.add_argument("--replot", action="store_true")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads((args.out / "construction.json").read_text()), args.out)
        return
    torch.set_num_threads(args.threads)
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, threads {args.threads}"
    print(f"machine: {machine}")
    xs, ys = prompts(64, args.seed + 1)
    xs, ys, xq = xs[:, :N_EXAMPLES], ys[:, :N_EXAMPLES], xs[:, N_EXAMPLES]
    seconds, results = {}, {"machine": machine, "torch": torch.__version__, "threads": args.threads}
    for name, fn in (("steps", error_vs_steps), ("terms", error_vs_terms), ("ramp", error_vs_ramp)):
        start = time.perf_counter()
        results[name] = fn(xs, ys, xq)
        seconds[name] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    results["comparison"] = comparison(args.prompts, args.seed, args.construct_prompts)
    seconds["comparison"] = round(time.perf_counter() - start, 1)
    results["seconds"] = seconds
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "construction.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out)
    print(f"seconds: {seconds}")


if __name__ == "__main__":
    main()
