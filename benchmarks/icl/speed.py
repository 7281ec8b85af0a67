"""In-context regression speed: prompts per second for training and evaluation of each backbone as
the number of examples n grows (attention cost), and the wall time of the direct-training baseline
per prompt.

    python benchmarks/icl/speed.py [--threads 1] [--repeats 3] [--ns 10 20 40]

Backbones (``zoo.icl.model.ICLTransformer``, width 64, 2 layers, 2 heads, d = 5, float32, CPU):
``gpt2/softmax``, ``gpt2/relu``, ``encoder/relu`` (one pass per prefix, all n prefixes) and
``encoder/relu x4`` (4 prefixes per batch, as ``train_prefixes: 4``). Training: forward, backward
and an Adam step on a batch of 64 prompts (loss on every predicted prefix); evaluation: a no-grad
forward of 256 prompts (all prefixes). Each case: a warm-up call, then the median over
``--repeats`` rounds of enough calls to take about 0.5 s.

Direct training (``zoo.icl.baselines.direct_training``): 300 Adam steps of a depth-N, 32-wide
ReLU network on n examples, batched over 256 prompts (per-prompt time = wall / 256) and for a
single prompt.

Prints two tables and one JSON line; writes ``docs/icl/speed.json`` and ``docs/icl/speed.png``.
Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from data_modules.icl_tasks import sample_prompts
from zoo.core.plots import save_figure
from zoo.icl.baselines import direct_training
from zoo.icl.model import ICLTransformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/timing.py
from timing import rounds  # noqa: E402

BACKBONES = {"gpt2/softmax": ("gpt2", "softmax", 0), "gpt2/relu": ("gpt2", "relu", 0),
             "encoder/relu": ("encoder", "relu", 0), "encoder/relu x4": ("encoder", "relu", 4)}


def timed(call, repeats: int, budget: float = 0.5) -> float:
    """Median seconds per call over ``repeats`` rounds of about ``budget`` seconds."""
    return statistics.median(rounds(call, repeats, budget))


def backbone_speed(name: str, n: int, repeats: int, d: int = 5) -> dict[str, float]:
    backbone, attention, keep = BACKBONES[name]
    torch.manual_seed(0)
    net = ICLTransformer(d, n, width=64, depth=2, heads=2, backbone=backbone, attention=attention)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    xs, ys, _ = sample_prompts("linear", 64, n, d, g)
    prefixes = torch.linspace(0, n - 1, keep).round().long() if keep else None

    def train():
        pred = net(xs, ys, prefixes) if prefixes is not None else net(xs, ys)
        target = ys[:, prefixes] if prefixes is not None else ys
        loss = ((pred - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    ex, ey, _ = sample_prompts("linear", 256, n, d, g)

    def evaluate():
        with torch.no_grad():
            net(ex, ey)

    return {"train_prompts_per_s": round(64 / timed(train, repeats), 1),
            "eval_prompts_per_s": round(256 / timed(evaluate, repeats), 1)}


def direct_speed(depth: int, n: int, prompts: int, steps: int = 300) -> float:
    xs, ys, _ = sample_prompts("relu_net", prompts, n + 1, 5, torch.Generator().manual_seed(0), depth=depth)
    start = time.perf_counter()
    direct_training(xs, ys, [n], depth=depth, hidden=32, steps=steps)
    return (time.perf_counter() - start) / prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ns", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--out", type=Path, default=Path("docs/icl"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, torch {torch.__version__}, threads {args.threads} (shared VM: noisy)\n")
    speed = {name: {n: backbone_speed(name, n, args.repeats) for n in args.ns} for name in BACKBONES}
    print("| backbone | " + " | ".join(f"n={n} train / eval" for n in args.ns) + " |")
    print("|:--|" + "--:|" * len(args.ns))
    for name, row in speed.items():
        print(f"| {name} | " + " | ".join(f"{r['train_prompts_per_s']:.0f} / {r['eval_prompts_per_s']:.0f}"
                                          for r in row.values()) + " |")
    direct = {}
    for depth in (3, 6):
        for n in (10, 20):
            direct[f"N={depth},n={n}"] = {"batched_256_ms_per_prompt": round(direct_speed(depth, n, 256) * 1e3, 3),
                                          "single_prompt_ms": round(direct_speed(depth, n, 1) * 1e3, 1)}
    print("\n| direct training (300 Adam steps) | ms/prompt, batched over 256 | ms, one prompt |")
    print("|:--|--:|--:|")
    for key, row in direct.items():
        print(f"| {key} | {row['batched_256_ms_per_prompt']} | {row['single_prompt_ms']} |")
    out = {"threads": args.threads, "torch": torch.__version__, "backbones": speed, "direct_training": direct}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(out, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, row in speed.items():
        for ax, key in zip(axes, ("train_prompts_per_s", "eval_prompts_per_s")):
            ax.loglog(args.ns, [row[n][key] for n in args.ns], marker="o", label=name)
            ax.set_title(key.replace("_", " "))
            ax.set_xlabel("examples n")
            ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    save_figure(fig, args.out / "speed.png")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
