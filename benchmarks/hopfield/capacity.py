"""U-Hop+ capacity and noise experiments on scikit-learn's digits (d = 64), CPU.

For each memory-set size M and seed: ``MemoryDataModule`` picks M digits; a ``UHopPlus`` model
fits its feature map (Stage I) with a Lightning ``Trainer``; then every separation function
retrieves the validation and test queries with and without the feature map. beta is chosen per
(M, seed, separation, variant, query type) from ``--betas`` by validation SSE, then the test
queries are scored at that beta, so neither variant is handicapped by one shared temperature (the
feature map changes the scale of the similarities).

    python benchmarks/hopfield/capacity.py [--sizes 10 20 50 100 200 500] [--seeds 0 1 2 3 4]
        [--epochs 50] [--out docs/hopfield]

Writes ``capacity.png`` (success rate and SSE vs M), ``noise.png`` (vs sigma at ``--noise-m``),
``hopfield_capacity.json`` (every number) to ``--out``; prints tables and one JSON summary line.
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
from lightning.pytorch import Trainer, seed_everything

from data_modules.memories import MemoryDataModule, noisy_queries
from zoo.core.plots import save_figure
from zoo.hopfield.retrieval import min_separation
from zoo.hopfield.uhop import QUERIES, UHopPlus

SEPARATIONS = ("softmax", "sparsemax", "entmax15")
VARIANTS = ("plain", "uhop")
SIGMAS = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0)


def fit(m: int, seed: int, epochs: int, noise_std: float = 0.5) -> tuple[UHopPlus, MemoryDataModule, float]:
    """Stage I on M digits; returns the model, its data and the fit time in seconds."""
    seed_everything(seed, verbose=False)
    data = MemoryDataModule(num_memories=m, noise_std=noise_std, queries_per_memory=math.ceil(200 / m), seed=seed)
    model = UHopPlus(in_dim=64)
    trainer = Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, accelerator="cpu", callbacks=[])
    start = time.perf_counter()
    trainer.fit(model, data)
    return model.eval(), data, time.perf_counter() - start


@torch.no_grad()
def score(model: UHopPlus, val: tuple, test: tuple, separation: str, variant: str, betas: list[float]) -> dict:
    """Test metrics at the beta with the lowest validation SSE."""
    use_map = variant == "uhop"
    best = min(betas, key=lambda b: model.retrieval_metrics(val[1], val[0], separation, use_map, b)[0]["sse"].mean())
    metrics, _ = model.retrieval_metrics(test[1], test[0], separation, use_map, best)
    return {"beta": best, **{k: v.mean().item() for k, v in metrics.items()}}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plot(results: dict, key: str, xs: list, xlabel: str, path: Path, queries: tuple[str, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(queries), figsize=(5.5 * len(queries), 7), squeeze=False)
    colors = {"softmax": "C0", "sparsemax": "C1", "entmax15": "C2"}
    for col, query in enumerate(queries):
        for row, metric in enumerate(("success", "sse")):
            ax = axes[row][col]
            for separation in SEPARATIONS:
                for variant in VARIANTS:
                    stats = [mean_std([r[metric] for r in results[key][str(x)][query][separation][variant]]) for x in xs]
                    ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=2,
                                color=colors[separation], linestyle="-" if variant == "uhop" else "--",
                                marker="o" if variant == "uhop" else "x",
                                label=f"{separation} {'U-Hop+' if variant == 'uhop' else 'plain'}")
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("success rate" if metric == "success" else "SSE")
            ax.set_title(f"{query} queries")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 50, 100, 200, 500])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0])
    parser.add_argument("--noise-m", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/hopfield")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    tree = lambda: {q: {s: {v: [] for v in VARIANTS} for s in SEPARATIONS} for q in QUERIES}  # noqa: E731
    results = {"capacity": {str(m): tree() for m in args.sizes}, "noise": {str(s): tree() for s in SIGMAS},
               "separation": {str(m): {"plain": [], "uhop": []} for m in args.sizes}}
    start = time.perf_counter()
    for m in args.sizes:
        for seed in args.seeds:
            model, data, seconds = fit(m, seed, args.epochs)
            results["separation"][str(m)]["plain"].append(min_separation(data.memories).item())
            results["separation"][str(m)]["uhop"].append(min_separation(data.memories, model.feature_map).item())
            val, test = data.val_set.tensors, data.test_set.tensors
            for qi, query in enumerate(QUERIES):
                for separation in SEPARATIONS:
                    for variant in VARIANTS:
                        row = score(model, (val[0], val[1 + qi]), (test[0], test[1 + qi]), separation, variant, args.betas)
                        results["capacity"][str(m)][query][separation][variant].append(row)
            if m == args.noise_m:
                for sigma in SIGMAS:
                    queries = [(t, noisy_queries(t, torch.Generator().manual_seed(seed * 3 + k), sigma))
                               for k, t in ((1, val[0]), (2, test[0]))]
                    for separation in SEPARATIONS:
                        for variant in VARIANTS:
                            row = score(model, queries[0], queries[1], separation, variant, args.betas)
                            results["noise"][str(sigma)]["noisy"][separation][variant].append(row)
            print(f"M={m} seed={seed}: fit {seconds:.1f} s", flush=True)
    elapsed = time.perf_counter() - start

    print(f"\nmachine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{len(args.seeds)} seeds, Stage I {args.epochs} epochs, beta from {args.betas} by validation SSE\n")
    summary = {}
    for query in QUERIES:
        print(f"{query} queries: test success rate (SSE), mean over seeds")
        print("| M | min sep plain -> U-Hop+ | " + " | ".join(f"{s} plain | {s} U-Hop+" for s in SEPARATIONS) + " |")
        print("|---" * (2 + 2 * len(SEPARATIONS)) + "|")
        for m in args.sizes:
            sep = results["separation"][str(m)]
            cells = []
            for separation in SEPARATIONS:
                for variant in VARIANTS:
                    rows = results["capacity"][str(m)][query][separation][variant]
                    success, sse = (mean_std([r[k] for r in rows])[0] for k in ("success", "sse"))
                    cells.append(f"{success:.3f} ({sse:.2f})")
                    summary[f"{query}/M{m}/{separation}/{variant}/success"] = round(success, 4)
            print(f"| {m} | {statistics.mean(sep['plain']):.4f} -> {statistics.mean(sep['uhop']):.4f} | "
                  + " | ".join(cells) + " |")
        print()
    print(f"noisy queries at M={args.noise_m}: test success rate (SSE) vs sigma")
    print("| sigma | " + " | ".join(f"{s} plain | {s} U-Hop+" for s in SEPARATIONS) + " |")
    print("|---" * (1 + 2 * len(SEPARATIONS)) + "|")
    for sigma in SIGMAS:
        cells = []
        for separation in SEPARATIONS:
            for variant in VARIANTS:
                rows = results["noise"][str(sigma)]["noisy"][separation][variant]
                if rows:
                    cells.append(f"{mean_std([r['success'] for r in rows])[0]:.3f} "
                                 f"({mean_std([r['sse'] for r in rows])[0]:.2f})")
        print(f"| {sigma} | " + " | ".join(cells) + " |")
    metastable = {f"{s}/{v}": round(statistics.mean(r["metastable"] for r in
                                                    results["capacity"][str(args.noise_m)]["masked"][s][v]), 2)
                  for s in SEPARATIONS for v in VARIANTS} if str(args.noise_m) in results["capacity"] else {}
    print(f"\nmetastable state size at M={args.noise_m} (masked queries): {metastable}")

    out.mkdir(parents=True, exist_ok=True)
    plot(results, "capacity", args.sizes, "number of memories M", out / "capacity.png", QUERIES)
    if any(results["noise"][str(s)]["noisy"]["softmax"]["plain"] for s in SIGMAS):
        plot(results, "noise", list(SIGMAS), "noise sigma", out / "noise.png", ("noisy",))
    (out / "hopfield_capacity.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(json.dumps({"benchmark": "hopfield_capacity", "seconds": round(elapsed, 1), "metastable": metastable,
                      **summary}))


if __name__ == "__main__":
    main()
