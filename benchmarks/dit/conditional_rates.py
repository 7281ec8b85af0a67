"""The conditional-DiT theory's rate predictions, measured (issue 21, item 3): conditional score
error vs the sample size n and vs the smoothness of the condition's effect, with and without
classifier-free guidance.

Data: ``zoo.dit.conditional_rates.ConditionalGaussianData`` (``y ~ U[0, 1]``,
``x | y ~ N(mu(y), sigma0^2 I)``, ``mu`` a Fourier series with coefficients ``k^{-s}``, Hoelder of
order ``beta = s - 1`` in ``y``); the conditional score is closed form, the unconditional one a
float64 quadrature over ``y``. Model: ``InContextScoreNet`` (an in-context conditional DiT: one token
per coordinate of ``x``, one for ``t``, one for ``y``; condition dropout ``--dropout`` for CFG).
Each run trains ``--steps`` AdamW steps (cosine decay to 0, batches of ``--batch`` drawn with
replacement from the n training pairs ``(x, y)``, fresh ``t`` and noise each step) and is then
evaluated on 4,096 fresh ``(x_0, y)`` at uniform random ``t`` (the same points for every n and seed):

- ``err(w)``: mean over elements of ``(eps_w,hat - eps_w*)^2`` with ``eps_w = eps(null) +
  w (eps(y) - eps(null))`` for both the network and the truth (``w = 0``: the unconditional model,
  ``w = 1``: the conditional model without guidance), at each ``--scales``;
- ``direction``: ``E (d_hat - d*)^2`` with ``d = eps(y) - eps(null)``, the error of the guidance
  direction; ``err(w) = err(0) + 2 w B + w^2 direction`` is quadratic in ``w``, so it is read off
  ``err(0), err(1), err(2)``: ``direction = (err(2) - 2 err(1) + err(0)) / 2`` (needs those scales);
- a step sweep (``--sweep-steps`` at ``--sweep-n``, smoothness ``--sweep-smoothness``, seed 0):
  ``err(0)`` and ``err(1)`` against the number of optimizer steps at fixed n, to tell optimization
  (error falls with steps) from statistics (error flat or rising with steps: overfitting);
- references (no training): ``untrained`` (the network at initialisation, ``eps = b_t x_t``) and
  ``ignore_y`` (the true unconditional noise used as the conditional estimate: what a model that
  does not use ``y`` at all would score in ``err(1)``).

Log-log slopes in n are least-squares fits over all seeds' points, per smoothness and scale.

With ``--stop-checkpoints K1 K2 ...`` the script runs only an oracle early-stopping experiment
instead: one run of ``max(K)`` steps per (s, n, seed), ``err(0)`` and ``err(1)`` at every checkpoint,
and the best checkpoint's ``err(1)`` (chosen on the evaluation points: an oracle) fitted against n.
``--replot`` redraws the PNG from the JSON of ``--name``.

    python benchmarks/dit/conditional_rates.py [--steps 1000] [--seeds 0 1] [--smoothness 1.5 2.5 4] [--quick]
    python benchmarks/dit/conditional_rates.py --n 64 256 1024 4096 16384 --smoothness 1.5 4 --seeds 0 \
        --stop-checkpoints 100 250 500 1000 2000 3000 --name conditional_rates_stopping

Prints a table and one JSON line; writes docs/dit/<--name>.json and .png (default conditional_rates).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from zoo.core.plots import save_figure
from zoo.dit.conditional_rates import ConditionalGaussianData, InContextScoreNet, guidance_errors

DOCS = Path(__file__).resolve().parents[2] / "docs" / "dit"
EVAL_SEED = 10**6


def train(net: InContextScoreNet, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float,
          seed: int, checkpoints: dict[int, Callable[[], None]] | None = None) -> None:
    """``steps`` AdamW steps on the diffusion loss with condition dropout, minibatches with replacement;
    ``checkpoints[k]()`` is called after step k (in eval mode, then back to training)."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for step in range(steps):
        rows = torch.randint(0, len(x), (batch,), generator=generator)
        t = torch.randint(0, net.diffusion.num_steps, (batch,), generator=generator)
        noise = torch.randn(batch, x.shape[1], generator=generator)
        loss = net.diffusion.training_loss(net, x[rows], t, noise, y=y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if checkpoints and step + 1 in checkpoints:
            net.eval()
            checkpoints[step + 1]()
            net.train()


def noised(data: ConditionalGaussianData, net: InContextScoreNet, x0: torch.Tensor, y: torch.Tensor,
           generator: torch.Generator) -> dict:
    """Uniform ``t``, fresh noise, ``x_t`` and both truths (float64) for the points ``(x0, y)``."""
    t = torch.randint(0, net.diffusion.num_steps, (len(x0),), generator=generator)
    x_t = net.diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=generator))
    abar = net.diffusion.alphas_cumprod[t]
    return dict(x_t=x_t, t=t, y=y, truth=(data.true_eps(x_t, y, abar), data.true_eps(x_t, None, abar)))


def evaluation_set(data: ConditionalGaussianData, net: InContextScoreNet, count: int) -> dict:
    generator = torch.Generator().manual_seed(EVAL_SEED)
    x0, y = data.sample(count, generator)
    return noised(data, net, x0, y, generator)


def errors(net: InContextScoreNet, data: ConditionalGaussianData, points: dict, scales: list[float]) -> dict:
    return guidance_errors(net, data, points["x_t"], points["t"], points["y"], scales, truth=points["truth"])


def run(data: ConditionalGaussianData, fresh: dict, n: int, seed: int, args: argparse.Namespace) -> dict:
    """Train on n pairs (data seed = ``seed``, init seed = ``seed``) for ``args.steps`` steps; errors on ``fresh``."""
    x, y = data.sample(n, torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    net = InContextScoreNet(x_dim=data.x_dim, hidden_size=args.hidden, depth=args.depth, cond_dropout=args.dropout)
    start = time.perf_counter()
    train(net, x, y, args.steps, args.batch, args.lr, seed)
    err = errors(net, data, fresh, sorted(set(args.scales) | {0.0, 1.0, 2.0}))
    direction = (err[2.0] - 2 * err[1.0] + err[0.0]) / 2
    return dict(n=n, smoothness=data.smoothness, seed=seed, steps=args.steps,
                err={str(w): e for w, e in err.items()}, direction=direction,
                seconds=round(time.perf_counter() - start, 2))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def reference_exponents(beta: float, x_dim: int, y_dim: int = 1) -> dict:
    """Reference slopes of the squared score error in n (docs/dit.md: not the paper's theorem, which
    was not readable here): isotropic ``2 beta / (2 beta + dx + dy)`` and, since ``p(x | y)`` is
    analytic in x, the anisotropic ``2 beta / (2 beta + dy)``."""
    return dict(isotropic=-2 * beta / (2 * beta + x_dim + y_dim), anisotropic=-2 * beta / (2 * beta + y_dim))


def data_and_evaluation_set(args, smoothness: float):
    """The conditional data of smoothness ``smoothness`` and its fresh evaluation points (seed 0)."""
    data = ConditionalGaussianData(x_dim=args.x_dim, smoothness=smoothness, frequencies=args.frequencies,
                                   amplitude=args.amplitude, data_std=args.data_std)
    torch.manual_seed(0)
    net = InContextScoreNet(x_dim=args.x_dim, hidden_size=args.hidden, depth=args.depth)
    return data, evaluation_set(data, net, args.eval)


def stopping_sweep(args: argparse.Namespace) -> dict:
    """Oracle early stopping: one run of ``max(--stop-checkpoints)`` steps (one cosine schedule) per
    (s, n, seed), ``err(0)`` and ``err(1)`` on the fresh points at every checkpoint, and the best
    checkpoint's ``err(1)`` per run (chosen on the evaluation points themselves: an oracle, the
    best this network and budget can do at that n, not a usable estimator)."""
    total = max(args.stop_checkpoints)
    runs, slopes, reference, ignore_y = [], {}, {}, {}
    for s in args.smoothness:
        data, fresh = data_and_evaluation_set(args, s)
        ignore_y[str(s)] = float((fresh["truth"][1] - fresh["truth"][0]).square().mean())
        rows = []
        for n in args.n:
            for seed in args.seeds:
                x, y = data.sample(n, torch.Generator().manual_seed(seed))
                torch.manual_seed(seed)
                net = InContextScoreNet(x_dim=args.x_dim, hidden_size=args.hidden, depth=args.depth,
                                        cond_dropout=args.dropout)
                curve: dict[str, dict[str, float]] = {}

                def record(k: int, net: InContextScoreNet = net, curve: dict = curve) -> None:
                    curve[str(k)] = {str(w): e for w, e in errors(net, data, fresh, [0.0, 1.0]).items()}

                start = time.perf_counter()
                train(net, x, y, total, args.batch, args.lr, seed, {k: (lambda k=k: record(k))
                                                                     for k in args.stop_checkpoints})
                best = min(curve, key=lambda k: curve[k]["1.0"])
                rows.append(dict(n=n, smoothness=s, seed=seed, curve=curve, best_steps=int(best),
                                 best_err=curve[best]["1.0"], best_err0=min(c["0.0"] for c in curve.values()),
                                 seconds=round(time.perf_counter() - start, 2)))
                print(f"s={s} n={n} seed={seed}: best err(1) {curve[best]['1.0']:.3e} at {best} steps", flush=True)
        runs += rows
        slopes[str(s)] = {"best_err": slope([r["n"] for r in rows], [r["best_err"] for r in rows]),
                          "best_err0": slope([r["n"] for r in rows], [r["best_err0"] for r in rows])}
        reference[str(s)] = reference_exponents(data.holder_order, args.x_dim)
    return dict(runs=runs, slopes=slopes, reference=reference, ignore_y=ignore_y, checkpoints=args.stop_checkpoints)


def plot_stopping(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker below)

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, s in enumerate(result["smoothness"]):
        rows = [r for r in result["runs"] if r["smoothness"] == s]
        ns = sorted({r["n"] for r in rows})
        stats = [mean_sd([r["best_err"] for r in rows if r["n"] == n]) for n in ns]
        axes[0].errorbar(ns, [m for m, _ in stats], yerr=[sd for _, sd in stats], marker="o", capsize=3,
                         color=colors[i], label=f"s={s} (slope {result['slopes'][str(s)]['best_err']:.2f}, "
                                                f"ref {result['reference'][str(s)]['isotropic']:.2f} / "
                                                f"{result['reference'][str(s)]['anisotropic']:.2f})")
        axes[0].axhline(result["ignore_y"][str(s)], color=colors[i], ls=":", lw=1)
        for j, n in enumerate(ns):
            run = next(r for r in rows if r["n"] == n)
            steps = sorted(int(k) for k in run["curve"])
            axes[1].plot(steps, [run["curve"][str(k)]["1.0"] for k in steps], "o-" if i == 0 else "s--",
                         color=colors[j % len(colors)], label=f"s={s}, n={n}", ms=3)
    axes[0].set(xscale="log", yscale="log", xlabel="n", title="best-checkpoint err(w=1) (dotted: ignore y)")
    axes[1].set(xscale="log", yscale="log", xlabel="optimizer steps", title="err(w=1) along training (seed 0)")
    axes[1].set_xticks(result["checkpoints"], [str(k) for k in result["checkpoints"]])
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in axes:
        ax.legend(fontsize=6)
    save_figure(fig, path, dpi=110)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker below)

    scales = result["scales"]
    smooth = result["smoothness"]
    panels = len(scales) + 2
    rows_ = math.ceil(panels / 3)
    fig, grid = plt.subplots(rows_, 3, figsize=(12, 3.8 * rows_), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[panels:]:
        ax.axis("off")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, w in zip(axes, scales):
        for i, s in enumerate(smooth):
            rows = [r for r in result["runs"] if r["smoothness"] == s]
            ns = sorted({r["n"] for r in rows})
            stats = [mean_sd([r["err"][str(w)] for r in rows if r["n"] == n]) for n in ns]
            ax.errorbar(ns, [m for m, _ in stats], yerr=[sd for _, sd in stats], marker="o", capsize=3,
                        color=colors[i], label=f"s={s} (slope {result['slopes'][str(s)][str(w)]:.2f}, "
                                               f"ref {result['reference'][str(s)]['isotropic']:.2f})")
            if w == 1.0:
                ax.axhline(result["ignore_y"][str(s)], color=colors[i], ls=":", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="n", title=f"err(w={w:g})" + (
            " (dotted: ignore y)" if w == 1.0 else ""))
        ax.legend(fontsize=6)
    ax = axes[len(scales)]
    ns = sorted({r["n"] for r in result["runs"]})
    for i, n in enumerate(ns):
        stats = [mean_sd([r["err"]["1.0"] for r in result["runs"] if r["n"] == n and r["smoothness"] == s])
                 for s in smooth]
        ax.errorbar(smooth, [m for m, _ in stats], yerr=[sd for _, sd in stats], marker="o", capsize=3,
                    color=colors[i % len(colors)], label=f"n={n}")
    ax.set(yscale="log", xlabel="smoothness s (Hoelder order s - 1 in y)", title="err(w=1) vs smoothness")
    ax.legend(fontsize=6)
    ax = axes[len(scales) + 1]
    sweep = result["step_sweep"]
    for i, n in enumerate(sorted({r["n"] for r in sweep})):
        rows = sorted((r for r in sweep if r["n"] == n), key=lambda r: r["steps"])
        for w, style in (("0.0", "s--"), ("1.0", "o-")):
            ax.plot([r["steps"] for r in rows], [r["err"][w] for r in rows], style, color=colors[i],
                    label=f"n={n}, err(w={float(w):g})")
    ax.set(xscale="log", yscale="log", xlabel="optimizer steps",
           title=f"steps sweep (s={result['sweep_smoothness']}, seed 0)")
    steps = sorted({r["steps"] for r in sweep})
    ax.set_xticks(steps, [str(k) for k in steps])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=6)
    save_figure(fig, path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[16, 64, 256, 1024, 4096, 16384])
    parser.add_argument("--smoothness", type=float, nargs="+", default=[1.5, 2.5, 4.0])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    parser.add_argument("--x-dim", type=int, default=2)
    parser.add_argument("--frequencies", type=int, default=32)
    parser.add_argument("--amplitude", type=float, default=1.5)
    parser.add_argument("--data-std", type=float, default=0.5)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.1, help="condition dropout (CFG)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval", type=int, default=4096, help="fresh evaluation points")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sweep-steps", type=int, nargs="*", default=[250, 500, 1000, 2000, 4000])
    parser.add_argument("--sweep-n", type=int, nargs="*", default=[256, 4096])
    parser.add_argument("--sweep-smoothness", type=float, default=2.5)
    parser.add_argument("--stop-checkpoints", type=int, nargs="*", default=[],
                        help="run only the oracle early-stopping experiment, evaluating at these steps")
    parser.add_argument("--replot", action="store_true", help="redraw the PNG from the JSON of --name")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="n in {16, 256}, s in {1.5, 4}, 60 steps, 1 seed, sweep 30/60 steps at n = 64")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--name", default="conditional_rates", help="file name of the JSON and PNG under --out")
    args = parser.parse_args()
    if args.quick:
        args.n, args.smoothness, args.steps, args.seeds, args.eval = [16, 256], [1.5, 4.0], 60, [0], 512
        args.sweep_steps, args.sweep_n = [30, 60], [64]
    if 1.0 not in args.scales:
        args.scales.append(1.0)  # err(1) is the conditional model's error, always reported
    torch.set_num_threads(args.threads)
    if args.replot:
        result = json.loads((args.out / f"{args.name}.json").read_text())
        (plot_stopping if "checkpoints" in result else plot)(result, args.out / f"{args.name}.png")
        return
    start = time.perf_counter()
    if args.stop_checkpoints:
        result = dict(benchmark="conditional_dit_rates_oracle_stopping", smoothness=args.smoothness, seeds=args.seeds,
                      x_dim=args.x_dim, hidden=args.hidden, depth=args.depth, batch=args.batch, lr=args.lr,
                      cond_dropout=args.dropout, eval_points=args.eval, **stopping_sweep(args),
                      threads=args.threads, torch=torch.__version__, seconds=0.0)
        result["seconds"] = round(time.perf_counter() - start, 1)
        for s in args.smoothness:
            rows = [r for r in result["runs"] if r["smoothness"] == s]
            for n in args.n:
                sel = [r for r in rows if r["n"] == n]
                print(f"s={s:<4} n={n:<6} best err(1) {statistics.fmean(r['best_err'] for r in sel):.3e} "
                      f"(steps {[r['best_steps'] for r in sel]}), best err(0) "
                      f"{statistics.fmean(r['best_err0'] for r in sel):.3e}")
            ref = result["reference"][str(s)]
            print(f"s={s:<4} slope best err(1) {result['slopes'][str(s)]['best_err']:.2f}, best err(0) "
                  f"{result['slopes'][str(s)]['best_err0']:.2f}; reference {ref['isotropic']:.2f} (isotropic), "
                  f"{ref['anisotropic']:.2f} (anisotropic); ignore-y {result['ignore_y'][str(s)]:.3e}")
        print(f"({result['seconds']} s)")
        if not args.quick:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
            plot_stopping(result, args.out / f"{args.name}.png")
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}))
        return
    runs, ignore_y, untrained, slopes, reference = [], {}, {}, {}, {}
    for s in args.smoothness:
        data, fresh = data_and_evaluation_set(args, s)
        true_cond, true_uncond = fresh["truth"]
        ignore_y[str(s)] = float((true_uncond - true_cond).square().mean())
        torch.manual_seed(0)
        untrained[str(s)] = errors(InContextScoreNet(x_dim=args.x_dim, hidden_size=args.hidden, depth=args.depth),
                                   data, fresh, args.scales)
        rows = [run(data, fresh, n, seed, args) for n in args.n for seed in args.seeds]
        runs += rows
        slopes[str(s)] = {str(w): slope([r["n"] for r in rows], [r["err"][str(w)] for r in rows]) for w in args.scales}
        slopes[str(s)]["direction"] = slope([r["n"] for r in rows], [r["direction"] for r in rows])
        reference[str(s)] = reference_exponents(data.holder_order, args.x_dim)
        print(f"s={s} done ({time.perf_counter() - start:.0f} s)", flush=True)
    data = ConditionalGaussianData(x_dim=args.x_dim, smoothness=args.sweep_smoothness, frequencies=args.frequencies,
                                   amplitude=args.amplitude, data_std=args.data_std)
    torch.manual_seed(0)
    fresh = evaluation_set(data, InContextScoreNet(x_dim=args.x_dim, hidden_size=args.hidden, depth=args.depth),
                           args.eval)
    step_sweep = []
    for n in args.sweep_n:
        for steps in args.sweep_steps:
            step_sweep.append(run(data, fresh, n, 0, argparse.Namespace(**{**vars(args), "steps": steps})))
    print(f"step sweep done ({time.perf_counter() - start:.0f} s)", flush=True)
    result = dict(benchmark="conditional_dit_rates", x_dim=args.x_dim, y_dim=1, frequencies=args.frequencies,
                  amplitude=args.amplitude, data_std=args.data_std, hidden=args.hidden, depth=args.depth,
                  cond_dropout=args.dropout, steps=args.steps, batch=args.batch, lr=args.lr, eval_points=args.eval,
                  seeds=args.seeds, smoothness=args.smoothness, scales=args.scales, runs=runs, slopes=slopes,
                  sweep_smoothness=args.sweep_smoothness, step_sweep=step_sweep,
                  reference=reference, ignore_y=ignore_y,
                  untrained={s: {str(w): e for w, e in v.items()} for s, v in untrained.items()},
                  threads=args.threads, torch=torch.__version__, machine=platform.machine(),
                  seconds=round(time.perf_counter() - start, 1))

    print(f"\nconditional DiT rates: dx={args.x_dim}, dy=1, K={args.frequencies}, A={args.amplitude}, "
          f"sigma0={args.data_std}, {args.steps} steps, seeds {args.seeds}")
    header = " ".join(f"{'err(w=' + format(w, 'g') + ')':>20}" for w in args.scales)
    print(f"{'s':>4} {'n':>6} {header} {'direction':>20}")
    for s in args.smoothness:
        rows = [r for r in runs if r["smoothness"] == s]
        for n in args.n:
            sel = [r for r in rows if r["n"] == n]
            cells = " ".join("{:>11.3e} +- {:.1e}".format(*mean_sd([r["err"][str(w)] for r in sel])) for w in args.scales)
            print(f"{s:>4} {n:>6} {cells} {statistics.fmean(r['direction'] for r in sel):>20.3e}")
        cells = " ".join(f"{slopes[str(s)][str(w)]:>20.2f}" for w in args.scales)
        print(f"{s:>4} {'slope':>6} {cells} {slopes[str(s)]['direction']:>20.2f}")
        ref = reference[str(s)]
        print(f"{s:>4} {'ref':>6} beta={s - 1:g}: isotropic {ref['isotropic']:.2f}, anisotropic {ref['anisotropic']:.2f};"
              f" ignore-y err(1) {ignore_y[str(s)]:.3e}; untrained err(1) {untrained[str(s)][1.0]:.3e}")
    print(f"\nstep sweep (s={args.sweep_smoothness}, seed 0)")
    for r in step_sweep:
        print(f"n={r['n']:<6} steps={r['steps']:<6} err(0)={r['err']['0.0']:.3e} err(1)={r['err']['1.0']:.3e}")
    print(f"({result['seconds']} s)")
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
        plot(result, args.out / f"{args.name}.png")
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "step_sweep")}))


if __name__ == "__main__":
    main()
