"""The latent-DiT theory's rate predictions, measured: score error and subspace error vs the sample
size n, score error vs the ambient dimension D at a fixed latent dimension d0, and in-context vs
adaLN-Zero time conditioning on the same budget.

Data: ``SubspaceDataModule`` (``x = B h``, ``B`` a D x d0 orthonormal basis; ``h ~ N(0, I)`` by
default, ``--mixture K`` for a K-component Gaussian mixture; the true noise ``E[eps | x_t]`` is closed
form in both cases, nonlinear for the mixture). Model:
``LatentDiT`` (linear ``W`` + DiT-tiny on the latents, the paper's score form). Each run trains
``--steps`` AdamW steps (the module's parameter groups, cosine decay to 0, batches of ``--batch``
drawn with replacement from the n training points: for small n it overfits, the regime of the
sample-complexity bound) and is then evaluated on 4,096 fresh points at uniform random t:

- score error: mean over elements of ``(eps_theta(x_t, t) - eps*(x_t, t))^2``, i.e.
  ``E_t (1 - abar_t) ||s_theta - grad log p_t||^2 / D`` in the paper's score form;
- subspace error: ``||P_W - B B^T||_F^2``.

Log-log slopes are least-squares fits over the seeds' points.

    python benchmarks/dit/latent_rates.py [--steps 400] [--seeds 0 1] [--mixture 0] [--threads 1] [--quick]

Prints a table and one JSON line; writes docs/dit/<--name>.json and .png (default latent_rates).
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

from data_modules import SubspaceDataModule
from zoo.core.plots import save_figure
from zoo.dit import LatentDiT

DOCS = Path(__file__).resolve().parents[2] / "docs" / "dit"


def train(model: LatentDiT, x: torch.Tensor, steps: int, batch: int, seed: int) -> None:
    """``steps`` AdamW steps on the diffusion loss, minibatches drawn with replacement from ``x``."""
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=model.hparams.lr, weight_decay=model.hparams.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(x), (batch,), generator=generator)
        t = torch.randint(0, model.diffusion.num_steps, (batch,), generator=generator)
        noise = torch.randn(batch, x.shape[1], generator=generator)
        loss = model.diffusion.training_loss(model, x[rows], t, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()


@torch.no_grad()
def evaluate(model: LatentDiT, data: SubspaceDataModule, count: int = 4096) -> tuple[float, float]:
    """(score error, subspace error) on ``count`` fresh points (module docstring)."""
    model.eval()
    generator = torch.Generator().manual_seed(10**6)
    x0, _ = data.generate(count, generator)
    t = torch.randint(0, model.diffusion.num_steps, (count,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    x_t = model.diffusion.q_sample(x0, t, noise)
    return float(model.score_error(data, x_t, t)), float(model.subspace_error(data.basis))


def run(n: int, ambient: int, latent: int, mixture: int, conditioning: str, seed: int, steps: int,
        batch: int) -> dict:
    data = SubspaceDataModule(ambient_dim=ambient, latent_dim=latent, mixture=mixture, num_train=n, seed=seed)
    data.setup()
    torch.manual_seed(seed)
    model = LatentDiT(ambient_dim=ambient, latent_dim=latent, conditioning=conditioning, lr=0.003, encoder_lr=0.03)
    start = time.perf_counter()
    train(model, data.train_set.tensors[0], steps, batch, seed)
    score, subspace = evaluate(model, data)
    return dict(n=n, D=ambient, d0=latent, conditioning=conditioning, seed=seed, score_error=score,
                subspace_error=subspace, seconds=round(time.perf_counter() - start, 2))


def slope(rows: list[dict], x: str, y: str) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    xs = [math.log(r[x]) for r in rows]
    ys = [math.log(r[y]) for r in rows]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


def summarize(rows: list[dict], key: str, value: str) -> list[tuple]:
    out = []
    for k in sorted({r[key] for r in rows}):
        values = [r[value] for r in rows if r[key] == k]
        out.append((k, statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0))
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for conditioning, rows in result["n_sweep"].items():
        for ax, value in zip(axes[:2], ("score_error", "subspace_error")):
            stats = summarize(rows, "n", value)
            ax.errorbar([s[0] for s in stats], [s[1] for s in stats], yerr=[s[2] for s in stats], marker="o",
                        capsize=3, label=f"{conditioning} (slope {result['slopes'][conditioning][value]:.2f})")
    stats = summarize(result["D_sweep"], "D", "score_error")
    axes[2].errorbar([s[0] for s in stats], [s[1] for s in stats], yerr=[s[2] for s in stats], marker="o", capsize=3,
                     label=f"adaln_zero, n={result['D_sweep_n']} (slope {result['slopes']['D']:.2f})")
    titles = ("score error vs n", "subspace error ||P_W - BB^T||_F^2 vs n", f"score error vs D (d0={result['d0']})")
    for ax, title, xlabel in zip(axes, titles, ("n", "n", "ambient D")):
        ax.set(xscale="log", yscale="log", title=title, xlabel=xlabel)
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--dims-n", type=int, default=1024, help="n of the D sweep")
    parser.add_argument("--ambient", type=int, default=32, help="D of the n sweep")
    parser.add_argument("--latent", type=int, default=4)
    parser.add_argument("--mixture", type=int, default=0, help="components of h (0: one Gaussian)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="n in {16, 1024}, D in {8, 64}, 150 steps, 1 seed")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--name", default="latent_rates", help="file name of the JSON and PNG under --out")
    args = parser.parse_args()
    if args.quick:
        args.n, args.dims, args.steps, args.seeds = [16, 1024], [8, 64], 150, [0]
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    common = dict(latent=args.latent, mixture=args.mixture, steps=args.steps, batch=args.batch)
    n_sweep = {c: [run(n, args.ambient, conditioning=c, seed=s, **common) for n in args.n for s in args.seeds]
               for c in ("adaln_zero", "in_context")}
    d_sweep = [run(args.dims_n, d, conditioning="adaln_zero", seed=s, **common) for d in args.dims for s in args.seeds]
    slopes = {c: {v: slope(rows, "n", v) for v in ("score_error", "subspace_error")} for c, rows in n_sweep.items()}
    slopes["D"] = slope(d_sweep, "D", "score_error")
    result = dict(benchmark="latent_dit_rates", d0=args.latent, D=args.ambient, mixture=args.mixture, steps=args.steps,
                  batch=args.batch, seeds=args.seeds, D_sweep_n=args.dims_n, n_sweep=n_sweep, D_sweep=d_sweep,
                  slopes=slopes, threads=args.threads, torch=torch.__version__, machine=platform.machine(),
                  seconds=round(time.perf_counter() - start, 1))

    print(f"latent DiT rates: D={args.ambient}, d0={args.latent}, mixture={args.mixture}, {args.steps} steps, "
          f"seeds {args.seeds}")
    print(f"{'conditioning':<12} {'n':>6} {'score error':>22} {'subspace error':>22}")
    for c, rows in n_sweep.items():
        for (n, ms, ss), (_, mu, su) in zip(summarize(rows, "n", "score_error"), summarize(rows, "n", "subspace_error")):
            print(f"{c:<12} {n:>6} {ms:>12.3e} +- {ss:.1e} {mu:>12.3e} +- {su:.1e}")
        print(f"{c:<12} {'slope':>6} {slopes[c]['score_error']:>22.2f} {slopes[c]['subspace_error']:>22.2f}")
    print(f"\nD sweep at n={args.dims_n} (adaln_zero)")
    for d, ms, ss in summarize(d_sweep, "D", "score_error"):
        print(f"D={d:<5} score error {ms:.3e} +- {ss:.1e}")
    print(f"slope vs D: {slopes['D']:.2f}   ({result['seconds']} s)")
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
        plot(result, args.out / f"{args.name}.png")
    print(json.dumps({k: v for k, v in result.items() if k not in ("n_sweep", "D_sweep")}))


if __name__ == "__main__":
    main()
