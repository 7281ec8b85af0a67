"""DiT training step and sampling forward, float32 vs bfloat16 autocast, on the CPU (or a GPU).

Forward+backward of the diffusion loss (one AdamW step) and a no-grad forward (one sampling
step, batch doubled as under CFG), for ``DiT-tiny/2`` on 8x8x1 digits and ``DiT-S/2`` on 16x16x4
latents (128px images; 256px latents are 32x32x4); the two precisions interleaved for ``--repeats`` rounds of
``--iters`` calls after a warm-up, median per call.

    python benchmarks/dit/step.py [--threads 2] [--repeats 3] [--iters 1] [--device cpu]

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from zoo.dit.diffusion import GaussianDiffusion
from zoo.dit.model import dit

CASES = [("DiT-tiny/2", 8, 1, 64), ("DiT-S/2", 16, 4, 4)]  # name, image side, channels, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    diffusion = GaussianDiffusion().to(device)
    rows = []
    for name, side, channels, batch in CASES:
        torch.manual_seed(0)
        net = dit(name, input_size=side, in_channels=channels, num_classes=10).to(device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        x0 = torch.randn(batch, channels, side, side, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        t = torch.randint(0, 1000, (2 * batch,), device=device)

        def train(dtype):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                loss = diffusion.training_loss(net, x0, y=y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        @torch.no_grad()
        def sample(dtype):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                net(torch.cat([x0, x0]), t, torch.cat([y, torch.full_like(y, 10)]))

        for task, fn in (("train step", train), ("sampling step", sample)):
            times = {"fp32": [], "bf16": []}
            for dtype in times:
                fn(dtype)  # warm-up
            for _ in range(args.repeats):
                for dtype in times:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    for _ in range(args.iters):
                        fn(dtype)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[dtype].append((time.perf_counter() - start) / args.iters)
            fp32, bf16 = (statistics.median(times[k]) * 1e3 for k in ("fp32", "bf16"))
            rows.append({"model": name, "task": task, "batch": batch if task == "train step" else 2 * batch,
                         "params": sum(p.numel() for p in net.parameters()), "fp32_ms": round(fp32, 2),
                         "bf16_ms": round(bf16, 2), "bf16_speedup": round(fp32 / bf16, 2)})
    print(f"machine: {platform.machine()}, device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| model | task | batch | params | fp32 ms | bf16 autocast ms | bf16 speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['task']} | {r['batch']} | {r['params']:,} | {r['fp32_ms']:.1f} | {r['bf16_ms']:.1f} "
              f"| {r['bf16_speedup']:.2f}x |")
    print(json.dumps({"benchmark": "dit_step", "device": str(device), "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
