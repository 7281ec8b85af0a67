"""zoo's DiT against diffusers' ``DiTTransformer2DModel`` at the same size: training step and
sampling forward throughput, same process, same threads, same shapes.

Both models: adaLN-Zero, 1,000 classes, GELU (tanh), out channels = in channels (no learned
sigma). Training step = forward + MSE loss + backward + AdamW step; sampling forward = no-grad
forward of a batch doubled as under classifier-free guidance. The two models alternate for
``--repeats`` rounds of ``--iters`` calls after a warm-up; the median per call is reported.

Ceiling: the sampling forward's matmul, convolution and attention FLOPs are counted
(``torch.utils.flop_counter.FlopCounterMode``; elementwise and normalization work is not counted)
and divided by its time, next to the machine's fp32 matmul throughput at the shape of the DiT's MLP
(tokens x hidden x 4 hidden, the bulk of the work). A heuristic bound, not a proof: an
implementation doing the same matmuls cannot run them much faster than that rate.
diffusers is a benchmark-only dependency: ``pip install -e ".[bench]"``.

    python benchmarks/dit/vs_diffusers.py [--threads 2] [--repeats 3] [--iters 2]

Prints a table and one JSON line.
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
from diffusers import DiTTransformer2DModel
from torch.utils.flop_counter import FlopCounterMode

from zoo.dit.model import DIT_SIZES, dit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/timing.py
from timing import rounds  # noqa: E402

CASES = [("DiT-S", 2, 16, 4, 8), ("DiT-B", 4, 32, 4, 4)]  # size, patch, side, channels, batch


def reference(size: str, patch: int, side: int, channels: int) -> DiTTransformer2DModel:
    spec = DIT_SIZES[size]
    return DiTTransformer2DModel(num_attention_heads=spec["num_heads"],
                                 attention_head_dim=spec["hidden_size"] // spec["num_heads"], in_channels=channels,
                                 out_channels=channels, num_layers=spec["depth"], sample_size=side, patch_size=patch,
                                 num_embeds_ada_norm=1000)


def timed(fn, repeats_iters: tuple[int, int], samples: list[float]) -> None:
    _, iters = repeats_iters
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    samples.append((time.perf_counter() - start) / iters)


def flops(call) -> int:
    """Floating-point operations of one no-grad call."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        call()
    return counter.get_total_flops()


def matmul_rate(m: int, k: int, n: int) -> float:
    """fp32 GFLOP/s of ``[m, k] @ [k, n]`` (median of 5 rounds of about 0.05 s)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * k * n / statistics.median(rounds(lambda: a @ b, 5, 0.05)) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for size, patch, side, channels, batch in CASES:
        ours = dit(size, patch_size=patch, input_size=side, in_channels=channels, num_classes=1000)
        theirs = reference(size, patch, side, channels)
        x = torch.randn(batch, channels, side, side)
        t = torch.randint(0, 1000, (batch,))
        y = torch.randint(0, 1000, (batch,))
        target = torch.randn_like(x)
        calls = {
            "zoo": (lambda x, t, y: ours(x, t, y), ours),
            "diffusers": (lambda x, t, y: theirs(x, timestep=t, class_labels=y).sample, theirs),
        }
        optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (_, model) in calls.items()}
        times = {(name, kind): [] for name in calls for kind in ("train", "sample")}

        def step(name):
            forward, model = calls[name]
            model.train()
            loss = ((forward(x, t, y) - target) ** 2).mean()
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()

        @torch.no_grad()
        def sample(name):
            forward, model = calls[name]
            model.eval()
            forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y]))

        for name in calls:  # warm-up
            step(name)
            sample(name)
        for _ in range(args.repeats):
            for name in calls:
                timed(lambda: step(name), (args.repeats, args.iters), times[(name, "train")])
                timed(lambda: sample(name), (args.repeats, args.iters), times[(name, "sample")])
        row = {"model": f"{size}/{patch}", "input": f"{side}x{side}x{channels}", "batch": batch,
               "params_zoo": sum(p.numel() for p in ours.parameters()),
               "params_diffusers": sum(p.numel() for p in theirs.parameters())}
        for kind in ("train", "sample"):
            a, b = (statistics.median(times[(n, kind)]) * 1000 for n in ("zoo", "diffusers"))
            row[f"{kind}_ms_zoo"], row[f"{kind}_ms_diffusers"] = round(a, 2), round(b, 2)
            row[f"{kind}_speedup"] = round(b / a, 3)
        for name in calls:
            count = flops(lambda: sample(name))  # the timed sampling call
            row[f"sample_gflop_{name}"] = round(count / 1e9, 2)
            row[f"sample_gflops_{name}"] = round(count / row[f"sample_ms_{name}"] / 1e6, 1)
        hidden = DIT_SIZES[size]["hidden_size"]
        row["matmul_gflops_mlp_shape"] = round(matmul_rate(2 * batch * (side // patch) ** 2, hidden, 4 * hidden), 1)
        rows.append(row)

    import diffusers

    print(f"machine: {platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}; median of {args.repeats} rounds x {args.iters} calls")
    print("| model | input | batch | params zoo / diffusers | train step ms zoo / diffusers | speed-up | "
          "sampling forward (2B) ms zoo / diffusers | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['input']} | {r['batch']} | {r['params_zoo']:,} / {r['params_diffusers']:,} | "
              f"{r['train_ms_zoo']:.1f} / {r['train_ms_diffusers']:.1f} | {r['train_speedup']:.2f}x | "
              f"{r['sample_ms_zoo']:.1f} / {r['sample_ms_diffusers']:.1f} | {r['sample_speedup']:.2f}x |")
    print("\n| model | sampling forward GFLOP zoo / diffusers | achieved GFLOP/s zoo / diffusers | "
          "fp32 matmul GFLOP/s at the MLP's shape |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['sample_gflop_zoo']} / {r['sample_gflop_diffusers']} | "
              f"{r['sample_gflops_zoo']} / {r['sample_gflops_diffusers']} | {r['matmul_gflops_mlp_shape']} |")
    print(json.dumps({"benchmark": "dit_vs_diffusers", "threads": args.threads, "torch": torch.__version__,
                      "diffusers": diffusers.__version__, "machine": platform.machine(), "rows": rows}))


if __name__ == "__main__":
    main()
