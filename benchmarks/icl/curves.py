"""In-context regression curves: normalized squared error vs the number of in-context examples,
transformer vs every baseline on the same prompts (Garg et al. 2022, Fig. 2; Wu et al. 2025's
"ICL matches direct training").

    python benchmarks/icl/curves.py [--prompts 1000] [--steps 300] [--threads 1]

Tasks (``ICLTaskDataModule``'s sampler, a fixed test seed, ``--prompts`` prompts each):
linear regression d = 5 and d = 10, and data of N = 3, 4, 6-layer ReLU networks (d = 5, hidden 32,
targets normalized per network). The transformers are the shipped checkpoints
(``zoo.load_pretrained``), one per task, each trained on its own task: ``icl-linear-d5``,
``icl-linear-d10``, ``icl-relu3-d5``, ``icl-relu4-d5``, ``icl-relu6-d5`` (GPT-2 backbone, softmax
attention), and on N = 3 data also ``icl-encoder-relu3-d5`` (the paper's ReLU-attention encoder;
configs/icl/). Baselines: zero,
averaging, 3-NN, least squares (minimum norm), ridge (lambda = ``RIDGE``), and
direct training: a fresh network of the task's shape (a linear model for the linear tasks,
the N-layer, 32-wide ReLU net for ReLU-net data) trained by ``--steps`` full-batch Adam steps
(lr ``--lr``) on each prompt's examples, batched over prompts (``zoo.icl.baselines``).

Normalized error: squared error / the task's target variance (predicting 0 scores 1), mean over
prompts with a normal 95% confidence interval (1.96 standard errors).

Also: a one-layer linear self-attention model trained on linear regression (d = 5, 10 examples)
and the cosine similarity of its query predictions with one GD step's (von Oswald et al.), with
the best step size.

Writes ``docs/icl/curves.json``, ``docs/icl/curves.png`` (``--replot`` redraws it from the JSON);
prints tables and one JSON line.
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
from zoo.icl.baselines import averaging, direct_training, gd_prediction, knn, least_squares, zero
from zoo.icl.model import LinearSelfAttention

RIDGE = 0.1  # lambda of the ridge baseline
TASKS = {  # name: (task, n_dims, n_points, depth, {curve label: checkpoint})
    "linear d=5": ("linear", 5, 11, 1, {"transformer": "icl-linear-d5"}),
    "linear d=10": ("linear", 10, 21, 1, {"transformer": "icl-linear-d10"}),
    "relu N=3": ("relu_net", 5, 16, 3, {"transformer": "icl-relu3-d5",
                                        "ReLU-attention encoder": "icl-encoder-relu3-d5"}),
    "relu N=4": ("relu_net", 5, 16, 4, {"transformer": "icl-relu4-d5"}),
    "relu N=6": ("relu_net", 5, 16, 6, {"transformer": "icl-relu6-d5"}),
}


def summary(errors: torch.Tensor) -> dict[str, list[float]]:
    """Mean and 95% normal CI half-width over prompts, per position (``errors [P, n]``)."""
    mean = errors.mean(0)
    half = 1.96 * errors.std(0) / math.sqrt(len(errors))
    return {"mean": [round(float(v), 5) for v in mean], "ci95": [round(float(v), 5) for v in half]}


def direct_positions(n: int) -> list[int]:
    return sorted({p for p in (1, 2, 3, 5, 8, 10, 12, 15, 20) if p < n} | {n - 1})


def run_task(name: str, prompts: int, steps: int, lr: float, seed: int) -> dict:
    task, d, n, depth, checkpoints = TASKS[name]
    xs, ys, var = sample_prompts(task, prompts, n, d, torch.Generator().manual_seed(seed), depth=depth, hidden=32)
    norm = var[:, None]
    curves, seconds = {}, {}
    for label, checkpoint in checkpoints.items():
        if checkpoint not in zoo.list_pretrained():
            print(f"{name}: {checkpoint} is not registered, skipped")
            continue
        model = zoo.load_pretrained(checkpoint)
        start = time.perf_counter()
        with torch.no_grad():
            pred = torch.cat([model(x, y) for x, y in zip(xs.split(256), ys.split(256))])
        seconds[label] = time.perf_counter() - start
        curves[label] = summary((pred - ys) ** 2 / norm)
    for label, fn in (("zero", zero), ("averaging", averaging), ("3-NN", knn), ("least squares", least_squares),
                      (f"ridge {RIDGE}", lambda a, b: least_squares(a, b, RIDGE))):
        start = time.perf_counter()
        pred = fn(xs.double(), ys.double()).float()
        seconds[label] = time.perf_counter() - start
        curves[label] = summary((pred - ys) ** 2 / norm)
    positions = direct_positions(n)
    start = time.perf_counter()
    pred = direct_training(xs, ys, positions, depth=depth, hidden=32, steps=steps, lr=lr, seed=seed)
    seconds["direct training"] = time.perf_counter() - start
    direct = summary((pred - ys[:, positions]) ** 2 / norm)
    return {"task": task, "n_dims": d, "n_points": n, "depth": depth, "checkpoints": checkpoints,
            "curves": curves, "direct_training": {"positions": positions, **direct},
            "seconds": {k: round(v, 3) for k, v in seconds.items()}}


def linear_attention_vs_gd(d: int = 5, n: int = 11, steps: int = 1000, seed: int = 0) -> dict:
    """Train ``LinearSelfAttention`` on the last position of linear-regression prompts; compare its
    query predictions with one GD step's on 2,000 fresh prompts."""
    torch.manual_seed(seed)
    layer = LinearSelfAttention(d)
    opt = torch.optim.Adam(layer.parameters(), lr=3e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        xs, ys, _ = sample_prompts("linear", 256, n, d, g)
        loss = ((layer(xs, ys)[:, -1] - ys[:, -1]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    xs, ys, _ = sample_prompts("linear", 2000, n, d, torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        trained, gd = layer(xs, ys)[:, -1], gd_prediction(xs, ys, 1.0)[:, -1]
    eta = float(trained @ gd / (gd @ gd))
    return {"n_dims": d, "examples": n - 1, "steps": steps,
            "cosine": round(torch.nn.functional.cosine_similarity(trained, gd, dim=0).item(), 5),
            "best_eta": round(eta, 4), "theory_eta": round((n - 1) / (n - 1 + d + 1), 4),
            "nmse_trained": round(float(((trained - ys[:, -1]) ** 2).mean()), 4),
            "nmse_gd_best_eta": round(float(((eta * gd - ys[:, -1]) ** 2).mean()), 4),
            "rel_diff_to_gd": round(float((trained - eta * gd).norm() / trained.norm()), 5)}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        for label, curve in res["curves"].items():
            mean, ci = torch.tensor(curve["mean"]), torch.tensor(curve["ci95"])
            k = torch.arange(len(mean))
            style = {"transformer": dict(lw=2.2, color="black"), "ReLU-attention encoder": dict(lw=2.2, color="darkgoldenrod")}
            style = style.get(label, dict(lw=1.2))
            (line,) = ax.plot(k, mean, label=label, **style)
            ax.fill_between(k, mean - ci, mean + ci, alpha=0.2, color=line.get_color())
        direct = res["direct_training"]
        mean, ci = torch.tensor(direct["mean"]), torch.tensor(direct["ci95"])
        ax.errorbar(direct["positions"], mean, yerr=ci, marker="o", ms=3, lw=1.5, ls="--", color="magenta",
                    label="direct training")
        ax.set_ylim(0, 1.5)
        ax.set_title(name)
        ax.set_xlabel("in-context examples")
        ax.set_ylabel("normalized squared error")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    for ax, res in zip(axes[0][1:], list(results.values())[1:]):  # panels with an extra model get their own legend
        if len(res["curves"]) > len(next(iter(results.values()))["curves"]):
            ax.legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=300, help="Adam steps of direct training")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam lr of direct training")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--out", type=Path, default=Path("docs/icl"))
    parser.add_argument("--replot", action="store_true", help="only redraw curves.png from curves.json")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads((args.out / "curves.json").read_text())["tasks"], args.out / "curves.png")
        return
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
          f"threads {args.threads}, prompts {args.prompts}")
    results = {name: run_task(name, args.prompts, args.steps, args.lr, args.seed) for name in args.tasks}
    for name, res in results.items():
        positions = res["direct_training"]["positions"]
        print(f"\n{name} (nmse +- 95% CI at k in-context examples)")
        print("| method | " + " | ".join(f"k={k}" for k in positions) + " |")
        print("|:--|" + "--:|" * len(positions))
        rows = {label: [(c["mean"][k], c["ci95"][k]) for k in positions] for label, c in res["curves"].items()}
        rows["direct training"] = list(zip(res["direct_training"]["mean"], res["direct_training"]["ci95"]))
        for label, values in rows.items():
            print(f"| {label} | " + " | ".join(f"{m:.3f}±{c:.3f}" for m, c in values) + " |")
    lsa = linear_attention_vs_gd(seed=0)
    print(f"\none-layer linear attention vs one GD step: {lsa}")
    out = {"prompts": args.prompts, "direct_steps": args.steps, "direct_lr": args.lr, "seed": args.seed,
           "threads": args.threads, "torch": torch.__version__, "tasks": results, "linear_attention_vs_gd": lsa}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curves.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(results, args.out / "curves.png")
    print(json.dumps({"tasks": {n: {k: r["curves"].get(k, {}).get("mean", [None])[-1] for k in
                                    ("transformer", "least squares")} for n, r in results.items()},
                      "linear_attention_vs_gd": lsa}))


if __name__ == "__main__":
    main()
