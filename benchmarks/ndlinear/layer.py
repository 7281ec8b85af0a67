"""NdLinear forward+backward: zoo.ndlinear.NdLinear vs the reference package (PyPI ``ndlinear`` 1.0.0)
vs a dense ``nn.Linear`` on the flattened trailing dims. float32, CPU, same threads, same process,
the three interleaved for ``--repeats`` rounds of ``--iters`` timed calls after a warm-up; the
table shows the median per call.

    python benchmarks/ndlinear/layer.py [--threads 2] [--repeats 7] [--iters 20]

Prints a table and one JSON line. Needs the reference package (``pip install ndlinear==1.0.0``,
a dev dependency of this project).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import torch
from ndlinear import NdLinear as ReferenceNdLinear
from torch import nn

from zoo.ndlinear.layer import NdLinear

# (batch, *input_dims) -> hidden_size
SHAPES = [
    ((256, 64, 8, 8), (64, 8, 8)),
    ((4096, 768, 1), (3072, 1)),
    ((64, 96, 7), (96, 32)),
    ((32, 3, 32, 32), (3, 16, 16)),
]


class Dense(nn.Module):
    """nn.Linear(prod(input_dims), prod(hidden)) on the flattened trailing dims."""

    def __init__(self, dims, hidden):
        super().__init__()
        self.dims, self.hidden = dims, hidden
        self.linear = nn.Linear(math.prod(dims), math.prod(hidden))

    def forward(self, x):
        return self.linear(x.flatten(-len(self.dims))).unflatten(-1, self.hidden)


def time_call(module: nn.Module, x: torch.Tensor, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        module(x).sum().backward()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    for shape, hidden in SHAPES:
        dims = shape[1:]
        reference = ReferenceNdLinear(dims, hidden)
        modules = {"reference": reference, "zoo": NdLinear.from_reference(reference), "linear": Dense(dims, hidden)}
        x = torch.randn(*shape, requires_grad=True)
        for module in modules.values():  # warm-up
            time_call(module, x, 3)
        times = {name: [] for name in modules}
        for _ in range(args.repeats):
            for name, module in modules.items():
                times[name].append(time_call(module, x, args.iters))
        median = {name: statistics.median(t) for name, t in times.items()}
        params = {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
        rows.append({
            "shape": f"{shape}->{hidden}",
            "ms": {k: round(v * 1e3, 4) for k, v in median.items()},
            "speedup_vs_reference": round(median["reference"] / median["zoo"], 3),
            "ratio_vs_linear": round(median["zoo"] / median["linear"], 3),
            "params": params,
        })

    header = f"{'shape':36}{'reference ms':>14}{'zoo ms':>10}{'Linear ms':>11}{'zoo speed-up':>14}{'zoo/Linear':>12}{'params nd / dense':>20}"
    print(header)
    for r in rows:
        print(f"{r['shape']:36}{r['ms']['reference']:14.3f}{r['ms']['zoo']:10.3f}{r['ms']['linear']:11.3f}"
              f"{r['speedup_vs_reference']:13.2f}x{r['ratio_vs_linear']:12.2f}"
              f"{r['params']['zoo']:>11,} / {r['params']['linear']:,}")
    speedups = sorted(r["speedup_vs_reference"] for r in rows)
    print(f"median speed-up over the reference: {statistics.median(speedups):.2f}x; slowest shape: {speedups[0]:.2f}x")
    print(json.dumps({
        "benchmark": "ndlinear", "threads": args.threads, "repeats": args.repeats, "iters": args.iters,
        "rows": rows, "median_speedup": round(statistics.median(speedups), 3), "min_speedup": speedups[0],
        "torch": torch.__version__, "machine": f"{platform.machine()} {os.cpu_count()} cores",
    }))


if __name__ == "__main__":
    main()
