"""The latent-DiT paper's computational criterion on the shipped latent DiT (``dit-digits-latent``:
DiT-tiny, adaLN-Zero, 2 blocks x 4 heads of d_head = 16, on the 16 latent cells of ``digits-ae``).

(a) Where the trained model sits relative to the bounded-entry criterion: per layer and timestep,
    the largest entries of q, k, v, the largest score |q k^T| / sqrt(d_h) and the equivalent entry
    bound ``B_eq = d_h^{1/4} max(|q|, |k|)`` (``zoo.dit.fast_attention_check``) vs sqrt(log L).
(b) The error of the polynomial fast attention (``zoo.nn.fast_attention``, degree 2, 4, 6, no exact
    fallback) vs exact attention as an entry-scale multiplier m on q and k sweeps the entries:
    per layer (on the trained model's own attention inputs) and end to end (the predicted noise of
    the model with every attention swapped vs the exact model at the same m; at m = 1 the exact
    model is the trained model), plus DDIM samples (CFG 4, ``--sample-steps`` steps, same noise)
    at m = 1 decoded to pixels.
(c) Time vs the number of tokens L for one attention call at the trained width (batch 1, 4 heads
    x 16): exact (``F.scaled_dot_product_attention``, the DiT's path, and the materialised
    ``exact_attention``) vs the polynomial attention; log-log slopes fitted for L >= ``--fit-from``.

Inputs: ``--batch`` digit images (sklearn's 8x8 digits, a seeded permutation; the benchmark does
not use the DataModule's split), encoded by the model's autoencoder, noised at ``--timesteps``.

    python benchmarks/dit/computational_criteria.py [--threads 1] [--quick]

Prints tables and writes docs/dit/computational_criteria.json, computational_error.png and
computational_time.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import rounds  # noqa: E402

from zoo.core.plots import save_figure  # noqa: E402
from zoo.core.registry import load_pretrained  # noqa: E402
from zoo.dit.diffusion import guided  # noqa: E402
from zoo.dit.fast_attention_check import (  # noqa: E402
    entry_statistics,
    layer_errors,
    polynomial_attention,
    scaled_exact_attention,
    swapped_attention,
)
from zoo.nn.fast_attention import exact_attention, fast_attention, feature_dim, taylor_error_bound  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "dit"


def digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    rows = torch.randperm(len(data.target), generator=torch.Generator().manual_seed(seed))[:n]
    images = torch.as_tensor(data.images, dtype=torch.float32)[rows, None] / 16.0
    return images, torch.as_tensor(data.target)[rows]


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def fitted_slopes(results: dict[str, list[dict]], fit_from: int) -> dict[str, dict]:
    """Per method, the log-log slope of seconds vs tokens over the points with ``tokens >= fit_from``."""
    fits = {}
    for name, rows in results.items():
        big = [r for r in rows if r["tokens"] >= fit_from]
        if len(big) >= 2:
            fits[name] = dict(slope=slope([r["tokens"] for r in big], [r["seconds"] for r in big]),
                              fit_tokens=[big[0]["tokens"], big[-1]["tokens"]])
    return fits


@torch.no_grad()
def accuracy_part(model, args) -> dict:
    net = copy.deepcopy(model.ema).double()  # float64 throughout: the errors measured are the approximation's
    images, labels = digits(args.batch, args.seed)
    z = model.encode(images).double()
    generator = torch.Generator().manual_seed(args.seed)
    noised = {}
    for step in args.timesteps:
        t = torch.full((len(z),), step)
        noised[step] = (model.diffusion.q_sample(z, t, torch.randn(z.shape, generator=generator, dtype=z.dtype)), t)

    entries = []
    for step, (xt, t) in noised.items():
        for layer, s in enumerate(entry_statistics(net, xt, t, labels)):
            entries.append(dict(t=step, layer=layer, **s))
    print("(a) entries: t layer max|q| max|k| max|v| max_score cs_bound B_eq sqrt(log L)")
    for e in entries:
        print(f"  {e['t']:4d} {e['layer']} {e['max_q']:.3f} {e['max_k']:.3f} {e['max_v']:.3f} {e['max_score']:.3f} "
              f"{e['cs_bound']:.3f} {e['b_eq']:.3f} {e['sqrt_log_tokens']:.3f}", flush=True)

    layers, end_to_end = [], []
    for step in args.error_timesteps:
        xt, t = noised[step]
        for m in args.multipliers:
            with swapped_attention(net, scaled_exact_attention(m)):
                reference = net(xt, t, labels).double()
            for degree in args.degrees:
                for layer, r in enumerate(layer_errors(net, xt, t, labels, degree, m)):
                    layers.append(dict(t=step, multiplier=m, degree=degree, layer=layer, **r,
                                       taylor_bound=taylor_error_bound(r["max_score"], degree)))
                with swapped_attention(net, polynomial_attention(degree, m)):
                    approx = net(xt, t, labels).double()
                rel = float((approx - reference).norm() / reference.norm())
                end_to_end.append(dict(t=step, multiplier=m, degree=degree, eps_rel_error=rel))
                print(f"  (b) t={step:4d} m={m:<5} g={degree}: eps rel error {rel:.3e}; layers "
                      + ", ".join(f"{r['rel_error']:.2e} (max score {r['max_score']:.2f})"
                                  for r in layers[-len(net.blocks):]), flush=True)

    sample_labels = torch.arange(args.samples) % 10
    shape = (len(sample_labels), *model.shape)
    cfg = guided(net, model.hparams.cfg_scale, net.null_class)

    def draw(fn=None):
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
        if fn is None:
            return model.diffusion.ddim_sample(cfg, shape, args.sample_steps, noise=noise, clip_x0=False, y=sample_labels)
        with swapped_attention(net, fn):
            return model.diffusion.ddim_sample(cfg, shape, args.sample_steps, noise=noise, clip_x0=False,
                                               y=sample_labels)

    exact_latent = draw()
    exact_pixels = model.decode(exact_latent.float())
    samples = []
    for degree in args.degrees:
        latent = draw(polynomial_attention(degree, 1.0))
        pixels = model.decode(latent.float())
        samples.append(dict(degree=degree,
                            latent_rel_error=float((latent - exact_latent).norm() / exact_latent.norm()),
                            pixel_rmse=float(((pixels - exact_pixels) ** 2).mean().sqrt()),
                            pixel_max_abs=float((pixels - exact_pixels).abs().max())))
        print(f"  (b) samples g={degree}: {samples[-1]}", flush=True)
    return dict(entries=entries, layer_errors=layers, eps_errors=end_to_end, sample_errors=samples)


def time_part(args, backward: bool = False, materialised: bool = True, tag: str = "(c)") -> dict:
    """Seconds per attention call (``backward``: forward + backward of ``out.sum()`` w.r.t. q, k, v)
    at each ``args.tokens`` for SDPA, the materialised exact attention (``materialised``) and the
    polynomial attention of each ``args.time_degrees``; a method is dropped after a call over
    ``args.max_call`` s or features over ``args.max_bytes``. Log-log slopes from ``args.fit_from``."""
    heads, d = 4, 16
    methods = {"sdpa (exact)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v)}
    if materialised:
        methods["materialised exact"] = lambda q, k, v: exact_attention(q, k, v)
    for degree in args.time_degrees:
        methods[f"poly g={degree} (F={feature_dim(d, degree)})"] = (
            lambda q, k, v, g=degree: fast_attention(q, k, v, degree=g, exact_fallback=False))
    results = {name: [] for name in methods}
    generator = torch.Generator().manual_seed(args.seed)
    for n in args.tokens:
        q, k, v = (0.5 * torch.randn(1, heads, n, d, generator=generator) for _ in range(3))
        for name, fn in methods.items():
            if results[name] and results[name][-1]["seconds"] > args.max_call:
                continue  # too slow already at the previous L
            degree = int(name.split("g=")[1].split()[0]) if "g=" in name else 0
            if degree and n * feature_dim(d, degree) * heads * 4 > args.max_bytes:
                continue

            def call(fn=fn):
                if backward:
                    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
                    fn(*leaves).sum().backward()
                else:
                    with torch.no_grad():
                        fn(q, k, v)

            seconds = min(rounds(call, repeats=args.repeats, budget=args.budget))
            results[name].append(dict(tokens=n, seconds=seconds))
            print(f"  {tag} L={n:5d} {name:24s} {'forward+backward ' if backward else ''}{seconds * 1e3:10.3f} ms",
                  flush=True)
    fits = fitted_slopes(results, args.fit_from)
    print(f"  {tag} log-log slopes:", json.dumps(fits), flush=True)
    return dict(heads=heads, head_dim=d, batch=1, times=results, slopes=fits)


def plot_times(ax, timing: dict, ylabel: str, title: str) -> None:
    """Seconds vs tokens of each method of a :func:`time_part` result, log-log, slopes in the legend."""
    for name, rows in timing["times"].items():
        fit = timing["slopes"].get(name)
        ax.plot([r["tokens"] for r in rows], [r["seconds"] for r in rows], "-o", ms=3,
                label=name + (f": slope {fit['slope']:.2f}" if fit else ""))
    ax.set(xscale="log", yscale="log", xlabel="tokens L", ylabel=ylabel, title=title)
    ax.legend(fontsize=7)


def plot(result: dict, args) -> None:
    import matplotlib.pyplot as plt

    colors = {2: "tab:blue", 4: "tab:orange", 6: "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    for degree in args.degrees:
        rows = sorted((r for r in result["layer_errors"] if r["degree"] == degree), key=lambda r: r["max_score"])
        ax.scatter([r["max_score"] for r in rows], [max(r["rel_error"], 1e-16) for r in rows], s=12,
                   color=colors.get(degree), label=f"g={degree}: measured per layer")
        xs = sorted({r["max_score"] for r in rows})
        ax.plot(xs, [min(taylor_error_bound(x, degree), 1e3) for x in xs], "--", color=colors.get(degree), lw=1,
                label=f"g={degree}: bound B^(g+1)/(g+1)! e^(2B)")
    trained = [e["max_score"] for e in result["entries"]]
    ax.axvspan(min(trained), max(trained), color="grey", alpha=0.2, label="trained model (m=1), all t")
    log_l = math.log(result["entries"][0]["tokens"])
    ax.axvline(log_l, color="k", ls=":", label="score = log L (entries B = sqrt(log L))")
    ax.set(xscale="log", yscale="log", xlabel="max |score| = m^2 max|q k^T|/sqrt(d_h)",
           ylabel="||A~ - A||_F / ||A||_F (one layer)", title="Polynomial attention error vs entry bound",
           ylim=(1e-14, 1e2))
    ax.legend(fontsize=7)
    ax = axes[1]
    for degree in args.degrees:
        for step, style in zip(args.error_timesteps, ["-o", "-s", "-^", "-v", "-d"]):
            rows = [r for r in result["eps_errors"] if r["degree"] == degree and r["t"] == step]
            ax.plot([r["multiplier"] for r in rows], [max(r["eps_rel_error"], 1e-16) for r in rows], style,
                    color=colors.get(degree), ms=4, label=f"g={degree}, t={step}")
    ax.axvline(1.0, color="grey", ls=":")
    ax.set(xscale="log", yscale="log", xlabel="entry multiplier m on q and k (1 = trained model)",
           ylabel="||eps~ - eps||/||eps|| (whole network)", title="End-to-end predicted-noise error")
    ax.legend(fontsize=6, ncol=3)
    save_figure(fig, DOCS / "computational_error.png")

    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    plot_times(ax, result["time"], "seconds per call", f"One attention call, 4 heads x 16, batch 1, {args.threads} thread(s)")
    save_figure(fig, DOCS / "computational_time.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dit-digits-latent")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[10, 100, 250, 500, 750, 999])
    parser.add_argument("--error-timesteps", type=int, nargs="+", default=[10, 500, 999])
    parser.add_argument("--multipliers", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0, 1.41])
    parser.add_argument("--degrees", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--time-degrees", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--fit-from", type=int, default=512)
    parser.add_argument("--max-call", type=float, default=3.0, help="stop a method after a call this slow (s)")
    parser.add_argument("--max-bytes", type=float, default=1.5e9, help="skip a degree whose features exceed this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke run: small batch, few points")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.timesteps, args.error_timesteps = 8, [10, 999], [999]
        args.multipliers, args.degrees, args.samples, args.sample_steps = [0.5, 1.0], [2, 4], 2, 3
        args.tokens, args.time_degrees, args.repeats, args.budget = [64, 128, 256], [2], 1, 0.01
    torch.set_num_threads(args.threads)
    start = time.time()
    model = load_pretrained(args.model)
    result = accuracy_part(model, args)
    result["time"] = time_part(args)
    result["config"] = {k: v for k, v in vars(args).items()}
    result["machine"] = dict(platform=platform.platform(), processor=platform.machine(), torch=torch.__version__,
                             threads=torch.get_num_threads(), wall_seconds=round(time.time() - start, 1))
    if args.quick:
        print(json.dumps(result["time"]["slopes"]))
        return
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "computational_criteria.json").write_text(json.dumps(result, indent=1))
    plot(result, args)
    print(f"wrote {DOCS}/computational_criteria.json, computational_error.png, computational_time.png "
          f"({result['machine']['wall_seconds']} s)")


if __name__ == "__main__":
    main()
