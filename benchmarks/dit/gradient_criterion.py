"""The training half of the latent-DiT paper's computational criterion on the shipped latent DiT
(``dit-digits-latent``), beside the inference half of ``computational_criteria.py``.

(d) Gradient error: the gradient of the denoising loss ``mean (eps_theta(x_t, t, y) - eps)^2`` with
    every attention swapped to the polynomial fast attention of degree g (``zoo.nn.fast_attention``,
    no exact fallback) against the same gradient with exact attention, both with the entry-scale
    multiplier m on q and k, float64 (``zoo.dit.fast_attention_check.gradient_errors``), per
    parameter group (attention weights, MLP weights, all), at several t.
(e) Time of forward + backward of one attention call vs the number of tokens L (batch 1, 4 heads x
    16, float32, Gaussian q, k, v with std 0.5, gradient of ``out.sum()`` w.r.t. q, k, v): SDPA and the
    polynomial attention of degree 2 (autograd through its features: linear in L, as the paper's
    low-rank backward); log-log slopes fitted for L >= ``--fit-from``.

    python benchmarks/dit/gradient_criterion.py [--threads 1] [--quick]

Writes docs/dit/gradient_criterion.json and gradient_criterion.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from computational_criteria import digits, plot_times, time_part  # noqa: E402

from zoo.core.plots import save_figure  # noqa: E402
from zoo.core.registry import load_pretrained  # noqa: E402
from zoo.dit.fast_attention_check import gradient_errors  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "dit"


def gradient_part(model, args) -> list[dict]:
    net = copy.deepcopy(model.ema).double().requires_grad_(False)
    images, labels = digits(args.batch, args.seed)
    with torch.no_grad():
        z = model.encode(images).double()
    rows = []
    for step in args.timesteps:
        generator = torch.Generator().manual_seed(args.seed + step)
        eps = torch.randn(z.shape, generator=generator, dtype=z.dtype)
        t = torch.full((len(z),), step)
        xt = model.diffusion.q_sample(z, t, eps)

        def loss(n, xt=xt, t=t, eps=eps):
            return (n(xt, t, labels)[:, :eps.shape[1]] - eps).pow(2).mean()

        for m in args.multipliers:
            for degree in args.degrees:
                errors = gradient_errors(net, loss, degree, m)
                rows.append(dict(t=step, multiplier=m, degree=degree, **errors))
                print(f"  (d) t={step:4d} m={m:<5} g={degree}: grad rel error attention {errors['attention']:.3e}, "
                      f"mlp {errors['mlp']:.3e}, all {errors['all']:.3e}", flush=True)
    return rows


def plot(result: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {2: "tab:blue", 4: "tab:orange", 6: "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    for degree in args.degrees:
        for step, style in zip(args.timesteps, ["-o", "-s", "-^", "-v"]):
            rows = [r for r in result["gradient_errors"] if r["degree"] == degree and r["t"] == step]
            ax.plot([r["multiplier"] for r in rows], [max(r["attention"], 1e-16) for r in rows], style,
                    color=colors.get(degree), ms=4, label=f"g={degree}, t={step}")
    ax.axvline(1.0, color="grey", ls=":")
    ax.set(xscale="log", yscale="log", xlabel="entry multiplier m on q and k (1 = trained model)",
           ylabel="||grad~ - grad|| / ||grad|| (attention weights)",
           title="Gradient error of the polynomial attention")
    ax.legend(fontsize=6, ncol=3)
    plot_times(axes[1], result["time"], "seconds (forward + backward)",
               f"One attention call, 4 heads x 16, {args.threads} thread(s)")
    save_figure(fig, DOCS / "gradient_criterion.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dit-digits-latent")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[10, 500, 999])
    parser.add_argument("--multipliers", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0, 1.41])
    parser.add_argument("--degrees", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 256, 1024, 2048, 4096, 8192])
    parser.add_argument("--time-degrees", type=int, nargs="+", default=[2])
    parser.add_argument("--fit-from", type=int, default=1024)
    parser.add_argument("--max-call", type=float, default=3.0)
    parser.add_argument("--max-bytes", type=float, default=1.5e9, help="skip a degree whose features exceed this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.timesteps, args.multipliers, args.degrees = 2, [999], [0.5, 1.0], [2]
        args.tokens, args.repeats, args.budget = [64, 128], 1, 0.01
    torch.set_num_threads(args.threads)
    start = time.time()
    model = load_pretrained(args.model)
    result = {"gradient_errors": gradient_part(model, args),
              "time": time_part(args, backward=True, materialised=False, tag="(e)"),
              "config": dict(vars(args))}
    result["machine"] = dict(platform=platform.platform(), processor=platform.machine(), torch=torch.__version__,
                             threads=torch.get_num_threads(), wall_seconds=round(time.time() - start, 1))
    if args.quick:
        print(json.dumps(result["time"]["slopes"]))
        return
    (DOCS / "gradient_criterion.json").write_text(json.dumps(result, indent=1))
    plot(result, args)
    print(f"wrote {DOCS}/gradient_criterion.json, gradient_criterion.png ({result['machine']['wall_seconds']} s)")


if __name__ == "__main__":
    main()
