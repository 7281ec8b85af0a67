"""NdLinear forward+backward with the cost model's plan vs with autotuning (plans measured once per
shape, ``zoo.ndlinear.layer.set_autotune``) vs the reference package (PyPI ``ndlinear`` 1.0.0), on
the seven shapes of issue 20: fp32 on CPU at each of ``--threads``, fp32 and bf16 autocast on CUDA.
Same weights, same process; the three are interleaved for ``--repeats`` rounds of calls (as many as
fit ``--target-ms``, at least one) after a warm-up, and the table shows the median per call (the
JSON also the fastest round, less sensitive to other load on the machine). The
autotuned layer's first call (its measurement) is timed separately (``tune s``) and not counted.

    python benchmarks/ndlinear/autotune.py [--device cpu|cuda] [--threads 1 2] [--shapes 0 2]
        [--repeats 5] [--target-ms 50] [--backward grad|sum]

``--backward grad`` (default) back-propagates a contiguous upstream gradient, as a loss does;
``sum`` calls ``.sum().backward()`` like benchmarks/ndlinear/layer.py (an expanded gradient, which
makes both implementations copy more). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

import torch
from ndlinear import NdLinear as ReferenceNdLinear
from torch import nn

from zoo.ndlinear.layer import NdLinear, Plan, clear_autotune_cache

# (batch, *input_dims) -> hidden_size; the first four are benchmarks/ndlinear/layer.py's
SHAPES = [
    ((256, 64, 8, 8), (64, 8, 8)),
    ((4096, 768, 1), (3072, 1)),
    ((64, 96, 7), (96, 32)),
    ((32, 3, 32, 32), (3, 16, 16)),
    ((8192, 64, 8, 8), (64, 8, 8)),
    ((65536, 96, 7), (96, 32)),
    ((1024, 3, 64, 64), (3, 32, 32)),
]


def describe(plan: Plan) -> str:
    """Steps in order: the modes of each (``x`` joins a merged block), ``^`` when moved last first;
    ``+b`` when the biases fuse into the GEMMs."""
    steps = " ".join(("^" if s.move else "") + "x".join(str(k) for k in s.modes) for s in plan.steps)
    return steps + (" +b" if plan.fused_bias else "")


class Timer:
    """Seconds per call of a block of calls: CUDA events on CUDA, time.perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, step, iters: int) -> float:
        if self.device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            begin.record()
            for _ in range(iters):
                step()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / 1e3 / iters
        start = time.perf_counter()
        for _ in range(iters):
            step()
        return (time.perf_counter() - start) / iters


def make_step(module: nn.Module, x: torch.Tensor, autocast: contextlib.AbstractContextManager, backward: str):
    upstream: list[torch.Tensor] = []

    def step() -> None:
        with autocast:
            out = module(x)
        if backward == "sum":
            out.float().sum().backward()
        else:
            if not upstream:
                upstream.append(torch.ones_like(out))
            out.backward(upstream[0])
    return step


def run_case(shape, hidden, device, dtype_name, args) -> dict:
    dims = shape[1:]
    torch.manual_seed(0)
    reference = ReferenceNdLinear(dims, hidden).to(device)
    cost_model = NdLinear.from_reference(reference, autotune=False).to(device)
    tuned = NdLinear.from_reference(reference, autotune=True).to(device)
    x = torch.randn(*shape, device=device, requires_grad=True)
    if dtype_name == "bf16":
        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        def autocast():
            return contextlib.nullcontext()
    timer = Timer(device)
    modules = {"reference": reference, "cost_model": cost_model, "autotuned": tuned}
    steps = {name: make_step(m, x, autocast(), args.backward) for name, m in modules.items()}

    start = time.perf_counter()  # the autotuned layer's first call measures its candidates
    steps["autotuned"]()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tune_s = time.perf_counter() - start
    with autocast():
        chosen = tuned.plan_for(x)

    for step in steps.values():  # warm-up, and the calls per block from the slowest
        timer(step, 1)
    per_call = max(timer(step, 1) for step in steps.values())
    iters = max(1, min(50, int(args.target_ms / 1e3 / max(per_call, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(timer(step, iters))
    median = {name: statistics.median(t) for name, t in times.items()}
    fastest = {name: min(t) for name, t in times.items()}  # robust to bursts of load on a shared machine
    candidates = tuned.tuning_candidates()
    return {
        "shape": f"{shape}->{hidden}",
        "dtype": dtype_name,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "ms": {k: round(v * 1e3, 4) for k, v in median.items()},
        "ms_fastest_block": {k: round(v * 1e3, 4) for k, v in fastest.items()},
        "speedup_cost_model": round(median["reference"] / median["cost_model"], 3),
        "speedup_autotuned": round(median["reference"] / median["autotuned"], 3),
        "speedup_cost_model_fastest_block": round(fastest["reference"] / fastest["cost_model"], 3),
        "speedup_autotuned_fastest_block": round(fastest["reference"] / fastest["autotuned"], 3),
        "cost_model_plan": describe(cost_model.plan),
        "autotuned_plan": describe(chosen),
        "autotuned_is_cost_model": chosen == cost_model.plan,
        "candidates": len(candidates),
        "tune_s": round(tune_s, 3),
        "iters": iters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU threads (each in turn)")
    parser.add_argument("--shapes", type=int, nargs="+", default=list(range(len(SHAPES))), help="indices in SHAPES")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target-ms", type=float, default=50.0, help="time per timed block of calls")
    parser.add_argument("--backward", default="grad", choices=["grad", "sum"])
    parser.add_argument("--dtypes", nargs="+", default=None, choices=["fp32", "bf16"],
                        help="default: fp32 on CPU, fp32 and bf16 autocast on CUDA")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch.cuda.is_available() is False here")
    dtypes = args.dtypes or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    thread_counts = args.threads if device.type == "cpu" else [torch.get_num_threads()]

    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        clear_autotune_cache()
        for index in args.shapes:
            shape, hidden = SHAPES[index]
            for dtype_name in dtypes:
                rows.append(run_case(shape, hidden, device, dtype_name, args))
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    print(f"{'shape':34}{'dtype':>6}{'thr':>4}{'reference ms':>14}{'cost-model ms':>15}{'autotuned ms':>14}"
          f"{'cm speed-up':>13}{'at speed-up':>13}{'tune s':>8}  autotuned plan (cost model's)")
    for r in rows:
        plan = r["autotuned_plan"]
        if not r["autotuned_is_cost_model"]:
            plan += f" ({r['cost_model_plan']})"
        print(f"{r['shape']:34}{r['dtype']:>6}{r['threads'] or '-':>4}{r['ms']['reference']:14.3f}"
              f"{r['ms']['cost_model']:15.3f}{r['ms']['autotuned']:14.3f}{r['speedup_cost_model']:12.2f}x"
              f"{r['speedup_autotuned']:12.2f}x{r['tune_s']:8.2f}  {plan}")
    for key in ("speedup_cost_model", "speedup_autotuned", "speedup_cost_model_fastest_block",
                "speedup_autotuned_fastest_block"):
        values = sorted(r[key] for r in rows)
        print(f"{key}: median {statistics.median(values):.2f}x, slowest {values[0]:.2f}x")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.machine()} {os.cpu_count()} cores"
    print(json.dumps({
        "benchmark": "ndlinear/autotune", "device": device.type, "machine": name, "backward": args.backward,
        "repeats": args.repeats, "target_ms": args.target_ms, "rows": rows,
        "min_speedup_cost_model": min(r["speedup_cost_model"] for r in rows),
        "min_speedup_autotuned": min(r["speedup_autotuned"] for r in rows),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
